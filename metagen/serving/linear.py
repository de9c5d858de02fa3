"""A linear model: ``X @ W.T + b``, then softmax for classes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np


@dataclass
class LinearPart:
    kind: ClassVar[str] = "linear"

    weight: np.ndarray
    """float64 (outputs, features); a binary logistic model is stored as two rows [0, w]."""
    bias: np.ndarray
    """float64 (outputs,): -inf for a class the model never saw."""
    regression: bool

    def predict(self, X: np.ndarray) -> np.ndarray:
        raw = np.asarray(X, dtype=np.float64) @ self.weight.T + self.bias
        if self.regression:
            return raw[:, 0]
        raw = np.exp(raw - raw.max(axis=1, keepdims=True))
        return raw / raw.sum(axis=1, keepdims=True)

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        return {"regression": self.regression}, {"weight": self.weight, "bias": self.bias}

    @classmethod
    def from_arrays(cls, meta: dict, arrays: dict[str, np.ndarray]) -> "LinearPart":
        return cls(np.asarray(arrays["weight"]), np.asarray(arrays["bias"]), bool(meta["regression"]))
