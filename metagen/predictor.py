"""The ``serve`` flow: model file -> schema check -> views -> members -> weighted blend -> predictions.

Nothing here imports Optuna, the search or any training code (a test proves it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from metagen.errors import DataError, SchemaError
from metagen.model import FittedModel
from metagen.model_file import load_fitted, save_model


class Predictor:
    """A fitted model, ready to predict on new rows given as a DataFrame (or an array in column order)."""

    def __init__(self, fitted: FittedModel) -> None:
        self.fitted = fitted

    @property
    def task(self) -> str:
        return self.fitted.task

    @property
    def classes_(self) -> np.ndarray | None:
        return None if self.fitted.classes is None else np.asarray(self.fitted.classes)

    @property
    def feature_names(self) -> list[str]:
        return [c["name"] for c in self.fitted.columns]

    def _rows(self, X: pd.DataFrame | np.ndarray) -> pd.DataFrame:
        if not isinstance(X, pd.DataFrame):
            arr = np.asarray(X, dtype=object)
            if arr.ndim != 2 or arr.shape[1] != len(self.feature_names):
                raise SchemaError(
                    f"Expected rows with {len(self.feature_names)} columns, got an array of shape {arr.shape}.",
                    "Pass a DataFrame with named columns, or an array in the training column order.",
                )
            X = pd.DataFrame(arr, columns=self.feature_names).infer_objects()
        X = X.rename(columns=str)
        missing = [c for c in self.fitted.input_names if c not in X.columns]
        if missing:
            raise SchemaError(
                f"Missing column(s) the model was fitted on: {', '.join(missing)}.",
                "Add them (empty values are allowed) or fit a new model without them.",
            )
        if len(X) == 0:
            raise DataError("No rows to predict.", "Pass at least one row.")
        return X

    def predict_proba(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        if self.task == "regression":
            raise DataError("predict_proba needs a classification model; this one does regression.", "Use predict.")
        return self.fitted.predict_raw(self._rows(X))

    def predict(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        out = self.fitted.predict_raw(self._rows(X))
        return out if self.task == "regression" else self.classes_[out.argmax(axis=1)]

    def save(self, path: str | Path) -> Path:
        return save_model(self.fitted, path)


def load(path: str | Path) -> Predictor:
    """Load a model file; never unpickles or executes anything from it."""
    return Predictor(load_fitted(path))
