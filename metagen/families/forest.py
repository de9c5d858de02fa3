"""Forests: RandomForest and ExtraTrees, scored on their out-of-bag predictions.

A forest needs no folds: every tree leaves about a third of the rows out of its
bootstrap sample, and those rows score it. One forest on every training row is
both the trial's score and the final member.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import optuna

from metagen.families._base import Family, TaskInfo, Trained, Watch, expand_columns
from metagen.families._trees import check_export, from_forest

# Trees added between two looks at the clock.
CHUNK = 16
# Each tree's bootstrap sample holds at most this many rows: on large tables a forest stays seconds, not minutes.
MAX_TREE_ROWS = 50_000
MAX_FEATURES = ["sqrt", "log2", 0.33, 0.66, 1.0]


class Forest(Family):
    name = "forest"
    views = ("ordinal",)
    out_of_bag = True

    def suggest(self, trial: optuna.Trial, info: TaskInfo) -> dict[str, Any]:
        p = self.param
        return {
            "kind": trial.suggest_categorical(p("kind"), ["random", "extra"]),
            "n_estimators": trial.suggest_int(p("n_estimators"), 32, 300, log=True),
            "max_features": trial.suggest_categorical(p("max_features"), MAX_FEATURES),
            "min_samples_leaf": trial.suggest_int(p("min_samples_leaf"), 1, 32, log=True),
        }

    def defaults(self, info: TaskInfo) -> list[dict[str, Any]]:
        max_features = 1.0 if info.regression else "sqrt"
        base = {"kind": "random", "n_estimators": 100, "max_features": max_features, "min_samples_leaf": 1}
        return [base, {**base, "kind": "extra"}]

    def view(self, config: dict[str, Any]) -> str:
        return "ordinal"

    def train(self, X: np.ndarray, y: np.ndarray, config: dict[str, Any], info: TaskInfo, *, seed: int,
              deadline: float | None, watch: Watch | None = None) -> Trained:
        from sklearn.ensemble import (
            ExtraTreesClassifier,
            ExtraTreesRegressor,
            RandomForestClassifier,
            RandomForestRegressor,
        )

        classes = {("random", False): RandomForestClassifier, ("random", True): RandomForestRegressor,
                   ("extra", False): ExtraTreesClassifier, ("extra", True): ExtraTreesRegressor}
        cls = classes[(config["kind"], info.regression)]
        max_samples = None if len(y) <= MAX_TREE_ROWS else MAX_TREE_ROWS / len(y)
        chunk = CHUNK if len(y) <= MAX_TREE_ROWS else max(2, info.threads)
        model = cls(n_estimators=0, max_features=config["max_features"], max_samples=max_samples,
                    min_samples_leaf=int(config["min_samples_leaf"]), bootstrap=True, n_jobs=info.threads,
                    random_state=seed, warm_start=True)
        total, hit = int(config["n_estimators"]), False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a few rows in no tree's out-of-bag sample; warm start notes
            while model.n_estimators < total:
                model.set_params(n_estimators=min(total, model.n_estimators + chunk))
                model.fit(X, y)
                if deadline is not None and time.monotonic() > deadline and model.n_estimators < total:
                    hit = True
                    break
            model.set_params(oob_score=True)
            model.fit(X, y)  # no new trees: computes the out-of-bag predictions of the trees grown
        oob = model.oob_prediction_ if info.regression else model.oob_decision_function_
        oob = np.asarray(oob, dtype=np.float64)
        if info.regression:
            oob = np.where(np.isfinite(oob), oob, float(np.mean(y)))
        else:
            prior = np.bincount(np.searchsorted(model.classes_, y), minlength=len(model.classes_)) / len(y)
            oob = np.where(np.isfinite(oob).all(axis=1, keepdims=True), oob, prior)
            oob = expand_columns(oob, model.classes_, info.n_out)
        part = from_forest(model, info.n_out, X.shape[1], info.regression)
        check_rows = X[: min(len(X), 256)]
        expected = (model.predict(check_rows) if info.regression else
                    expand_columns(model.predict_proba(check_rows), model.classes_, info.n_out))
        check_export(part, check_rows, expected)
        return Trained(part, out_of_bag=oob, hit_deadline=hit, details={"n_estimators": len(model.estimators_)})
