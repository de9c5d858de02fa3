"""What a fitted member is made of at predict time: plain arrays and the code that reads them.

Every kind of part (a tree ensemble, a linear model, a network) predicts from a
float32 view of the rows and writes itself as JSON + named arrays. Nothing here
imports Optuna, scikit-learn's estimators or any training code, so a model file
loads where only numpy and torch are installed.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import numpy as np

from metagen.serving.linear import LinearPart
from metagen.serving.network import NetworkPart
from metagen.serving.trees import TreePart


class Part(Protocol):
    """One trained model: ``predict`` gives class probabilities (n, n_out) or standardised values (n,)."""

    kind: ClassVar[str]

    def predict(self, X: np.ndarray) -> np.ndarray: ...

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]: ...

    @classmethod
    def from_arrays(cls, meta: dict, arrays: dict[str, np.ndarray]) -> "Part": ...


PART_KINDS: dict[str, type] = {cls.kind: cls for cls in (TreePart, LinearPart, NetworkPart)}

__all__ = ["PART_KINDS", "LinearPart", "NetworkPart", "Part", "TreePart"]
