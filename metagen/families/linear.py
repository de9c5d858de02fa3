"""Linear models: logistic regression for classes, ridge for numbers, on one-hot and scaled columns."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import optuna

from metagen.families._base import Family, TaskInfo, Trained, Watch
from metagen.serving.linear import LinearPart


class Linear(Family):
    name = "linear"
    views = ("quantile", "robust")

    def suggest(self, trial: optuna.Trial, info: TaskInfo) -> dict[str, Any]:
        p = self.param
        return {
            "strength": trial.suggest_float(p("strength"), 1e-3, 1e3, log=True),
            "scaling": trial.suggest_categorical(p("scaling"), ["quantile", "robust"]),
        }

    def defaults(self, info: TaskInfo) -> list[dict[str, Any]]:
        return [{"strength": 1.0, "scaling": "quantile"}]

    def view(self, config: dict[str, Any]) -> str:
        return config["scaling"]

    def train(self, X: np.ndarray, y: np.ndarray, config: dict[str, Any], info: TaskInfo, *, seed: int,
              deadline: float | None, watch: Watch | None = None) -> Trained:
        """``strength`` is ridge's alpha, and the inverse of logistic regression's C."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression, Ridge

        X = np.asarray(X, dtype=np.float64)
        if info.regression:
            model = Ridge(alpha=config["strength"]).fit(X, y)
            return Trained(LinearPart(model.coef_.reshape(1, -1).copy(), np.atleast_1d(model.intercept_).astype(float),
                                      regression=True))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LogisticRegression(C=1.0 / config["strength"], max_iter=300).fit(X, y)
        classes = np.asarray(model.classes_, dtype=np.int64)
        weight = np.zeros((info.n_out, X.shape[1]))
        bias = np.full(info.n_out, -np.inf)
        if len(classes) == 2:  # sigmoid(z) is softmax over [0, z]
            weight[classes[1]], bias[classes] = model.coef_[0], [0.0, model.intercept_[0]]
        else:
            weight[classes], bias[classes] = model.coef_, model.intercept_
        return Trained(LinearPart(weight, bias, regression=False))
