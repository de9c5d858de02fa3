"""The fitted model as the model file holds it: views of the columns, weighted members, and what made them.

This is the ``serve`` flow's core: each view is computed once from the rows, each
member averages its parts (fold models) on its view, and the ensemble blends the
members by weight. It imports no training code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from metagen.preprocess import Preprocessor
from metagen.serving import Part


@dataclass
class Member:
    """One ensemble member: a configuration of one family, as one model or as the mean of its fold models."""

    family: str
    config: dict
    view: str
    """The preprocessor (in ``FittedModel.views``) whose output its parts read."""
    parts: list[Part]
    weight: float = 1.0
    score: float = float("nan")
    """Its own out-of-fold (or validation) score."""
    trial: int | None = None

    def predict(self, X: np.ndarray) -> np.ndarray:
        return sum(part.predict(X) for part in self.parts) / len(self.parts)


@dataclass
class FittedModel:
    columns: list[dict]
    target: str
    task: str
    classes: list | None
    views: dict[str, Preprocessor]
    members: list[Member]
    """The best single member first; the weights sum to one."""
    n_out: int
    y_mean: float = 0.0
    y_std: float = 1.0
    metrics: dict[str, float] = field(default_factory=dict)
    """The reported score and how it was obtained (``provenance['score_source']``)."""
    valid_score: float = float("nan")
    leaderboard: list[dict] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return next(iter(self.views.values())).input_names

    def transform(self, X: pd.DataFrame) -> dict[str, np.ndarray]:
        return {name: view.transform(X) for name, view in self.views.items()}

    def predict_views(self, views: dict[str, np.ndarray]) -> np.ndarray:
        """Probabilities, or values in target units: the members' weighted mean."""
        out = sum(m.weight * m.predict(views[m.view]) for m in self.members)
        if self.task == "regression":
            return out * self.y_std + self.y_mean
        return out / out.sum(axis=1, keepdims=True)  # exactly one in float64 (log loss checks it)

    def predict_raw(self, X: pd.DataFrame) -> np.ndarray:
        return self.predict_views(self.transform(X))
