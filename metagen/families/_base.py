"""The family seam: what every kind of model answers, as Optuna's samplers answer a few methods.

A family draws a configuration (a JSON-able dict) from an Optuna trial, says which
view of the table it reads, and trains a :class:`~metagen.serving.Part` under a
deadline. Optuna parameter names carry the family as a prefix (``gbdt.learning_rate``),
so one study holds every family's space side by side.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import optuna

from metagen.serving import Part
from metagen.train import Watch

if TYPE_CHECKING:
    from metagen.meta_model import MetaModel


@dataclass(frozen=True)
class TaskInfo:
    """What a family may know about the table it trains on."""

    task: str
    n_out: int
    """Classes, or 1 for regression."""
    n_rows: int
    n_columns: int
    categorical: tuple[bool, ...] = ()
    """Per column of the ordinal view: category codes that a tree may split as sets."""
    threads: int = 2
    meta: "MetaModel | None" = None
    """The meta-model whose learned starts network trials adapt."""

    @property
    def regression(self) -> bool:
        return self.task == "regression"


@dataclass(frozen=True)
class Candidate:
    """A configuration of one family, as the proposer and the portfolio hand them to the search."""

    family: str
    config: dict[str, Any] = field(hash=False)

    def to_json(self) -> dict[str, Any]:
        return {"family": self.family, "config": self.config}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Candidate":
        """``{"family", "config"}``; a bare network configuration (older meta-models) is an ``mlp`` one."""
        if "family" in data and "config" in data:
            return cls(str(data["family"]), dict(data["config"]))
        return cls("mlp", dict(data))


@dataclass
class Trained:
    """A trained part, and for families that have them its out-of-bag predictions on the training rows."""

    part: Part
    out_of_bag: np.ndarray | None = None
    hit_deadline: bool = False
    details: dict = field(default_factory=dict)
    """What training reached (boosting rounds, trees, steps), kept as a trial attribute of the study."""


class Family(ABC):
    """A model family; a new one is one module under ``metagen/families`` and one entry in ``FAMILIES``."""

    name: ClassVar[str]
    out_of_bag: ClassVar[bool] = False
    """Scored on its own out-of-bag predictions (one model on every row) instead of k fold models."""
    views: ClassVar[tuple[str, ...]]
    """Every view ``view(config)`` may name, so a fit prepares only those."""

    def __init__(self, *, max_steps: int | None = None) -> None:
        """``max_steps``: the most gradient steps a trial may take, for families that train by steps."""
        self.max_steps = max_steps

    @abstractmethod
    def suggest(self, trial: optuna.Trial, info: TaskInfo) -> dict[str, Any]:
        """Draw a configuration; parameters are named ``param(name)`` in the study."""

    @abstractmethod
    def defaults(self, info: TaskInfo) -> list[dict[str, Any]]:
        """Configurations known to be good without search, the strongest first."""

    @abstractmethod
    def view(self, config: dict[str, Any]) -> str:
        """The preprocessing the configuration reads: ``quantile``, ``robust`` or ``ordinal``."""

    @abstractmethod
    def train(self, X: np.ndarray, y: np.ndarray, config: dict[str, Any], info: TaskInfo, *, seed: int,
              deadline: float | None, watch: Watch | None = None) -> Trained:
        """Fit on these rows; stop adding capacity (trees, steps) once ``deadline`` (monotonic) passes.

        A family with ``rungs`` scores itself on the ``watch`` rows at those steps while it trains.
        """

    def rungs(self, config: dict[str, Any]) -> tuple[int, ...]:
        """Steps at which a trial's first fold reports its score, so the trial races others on training
        length (successive halving); empty: the trial reports its running score after each fold instead."""
        return ()

    @classmethod
    def pruner(cls) -> optuna.pruners.BasePruner:
        """How the search stops this family's trials that trail: by default, on their running fold scores."""
        # Steps are folds: a trial whose running mean over its first two folds trails the median stops.
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)

    def summary(self, config: dict[str, Any]) -> str:
        """The key parameters, for leaderboards."""
        return " ".join(f"{k}={_short(v)}" for k, v in config.items())

    def param(self, name: str) -> str:
        return f"{self.name}.{name}"

    def trial_params(self, config: dict[str, Any]) -> dict[str, Any]:
        """Parameters for ``study.enqueue_trial``, so that a known configuration is tried as it is."""
        return {"family": self.name, **{self.param(k): v for k, v in config.items()}}


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def expand_columns(pred: np.ndarray, classes: np.ndarray, n_out: int, fill: float = 0.0) -> np.ndarray:
    """Columns for the classes a model saw, placed among all ``n_out`` classes of the table."""
    out = np.full((pred.shape[0], n_out), fill, dtype=np.float64)
    out[:, np.asarray(classes, dtype=np.int64)] = pred
    return out
