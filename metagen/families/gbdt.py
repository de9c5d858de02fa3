"""Gradient-boosted trees: scikit-learn's HistGradientBoosting, with native categories and missing values."""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import optuna

from metagen.families._base import Family, TaskInfo, Trained, Watch, expand_columns
from metagen.families._trees import check_export, from_boosting

# Boosting rounds added between two looks at the clock (fewer on large tables, where a round takes longer).
CHUNK = 25
CHUNK_ROWS = 50_000


class GBDT(Family):
    name = "gbdt"
    views = ("ordinal",)

    def suggest(self, trial: optuna.Trial, info: TaskInfo) -> dict[str, Any]:
        p = self.param
        return {
            "learning_rate": trial.suggest_float(p("learning_rate"), 0.01, 0.3, log=True),
            "max_iter": trial.suggest_int(p("max_iter"), 50, 1000, log=True),
            "max_leaf_nodes": trial.suggest_int(p("max_leaf_nodes"), 4, 128, log=True),
            "min_samples_leaf": trial.suggest_int(p("min_samples_leaf"), 2, 64, log=True),
            "l2_regularization": trial.suggest_float(p("l2_regularization"), 1e-6, 10.0, log=True),
            "max_features": trial.suggest_float(p("max_features"), 0.3, 1.0),
            "early_stopping": trial.suggest_categorical(p("early_stopping"), [False, True]),
        }

    def defaults(self, info: TaskInfo) -> list[dict[str, Any]]:
        base = {"learning_rate": 0.1, "max_iter": 100, "max_leaf_nodes": 31, "min_samples_leaf": 20,
                "l2_regularization": 1e-6, "max_features": 1.0, "early_stopping": False}
        return [base, {**base, "learning_rate": 0.05, "max_iter": 300, "early_stopping": True}]

    def view(self, config: dict[str, Any]) -> str:
        return "ordinal"

    def train(self, X: np.ndarray, y: np.ndarray, config: dict[str, Any], info: TaskInfo, *, seed: int,
              deadline: float | None, watch: Watch | None = None) -> Trained:
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        cls = HistGradientBoostingRegressor if info.regression else HistGradientBoostingClassifier
        categorical = np.asarray(info.categorical, dtype=bool)
        # The inner validation split is stratified: every class needs two rows.
        early = bool(config["early_stopping"]) and len(y) >= 200 and (info.regression or _rarest(y) >= 2)
        model = cls(
            learning_rate=config["learning_rate"], max_leaf_nodes=int(config["max_leaf_nodes"]),
            min_samples_leaf=int(config["min_samples_leaf"]), l2_regularization=config["l2_regularization"],
            max_features=config["max_features"], early_stopping=early, validation_fraction=0.15 if early else None,
            n_iter_no_change=20, categorical_features=categorical if categorical.any() else None,
            random_state=seed, warm_start=True, max_iter=0,
        )
        total, hit = int(config["max_iter"]), False
        chunk = int(np.clip(CHUNK * CHUNK_ROWS / max(1, len(y)), 2, CHUNK))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            while model.max_iter < total:
                model.set_params(max_iter=min(total, model.max_iter + chunk))
                model.fit(X, y)
                if early and model.n_iter_ < model.max_iter:  # stopped on its inner validation split
                    break
                if deadline is not None and time.monotonic() > deadline:
                    hit = True
                    break
        part = from_boosting(model, info.n_out, X.shape[1], info.regression)
        check_rows = X[: min(len(X), 256)]
        expected = (model.predict(check_rows) if info.regression else
                    expand_columns(model.predict_proba(check_rows), model.classes_, info.n_out))
        check_export(part, check_rows, expected)
        return Trained(part, hit_deadline=hit, details={"n_iter": int(model.n_iter_)})


def _rarest(y: np.ndarray) -> int:
    counts = np.bincount(y)
    return int(counts[counts > 0].min())
