"""scikit-learn estimators around :func:`metagen.fit.fit_table`.

``__init__`` only stores; everything is checked in ``fit``; fitted state ends in ``_``.
A DataFrame keeps its column kinds (strings become categories); an array is read
as numbers, as scikit-learn does.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils._param_validation import Interval
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from metagen.families import parse_families
from metagen.fit import FitOptions, fit_table
from metagen.predictor import Predictor
from metagen.table import make_table

_TARGET = "__metagen_target__"


class _MetaGenBase(BaseEstimator):
    _parameter_constraints: dict = {
        "time_budget": [Interval(Real, 0, None, closed="neither")],
        "n_trials": [Interval(Integral, 1, None, closed="left"), None],
        "max_steps": [Interval(Integral, 1, None, closed="left"), None],
        "random_state": ["random_state"],
        "use_meta": ["boolean"],
        "families": [str, list, tuple, None],
        "infer_limit": [Interval(Real, 0, None, closed="neither"), None],
    }
    _task: str | None = None

    def __init__(
        self,
        *,
        time_budget: float = 60.0,
        n_trials: int | None = None,
        max_steps: int | None = None,
        random_state: int | None = None,
        use_meta: bool = True,
        families: str | list[str] | tuple[str, ...] | None = None,
        infer_limit: float | None = None,
    ) -> None:
        self.time_budget = time_budget
        self.n_trials = n_trials
        self.max_steps = max_steps
        self.random_state = random_state
        self.use_meta = use_meta
        self.families = families
        self.infer_limit = infer_limit

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # missing values are imputed, with an indicator column
        tags.non_deterministic = self.random_state is None
        return tags

    def _frame(self, X, *, reset: bool) -> pd.DataFrame:
        if isinstance(X, pd.DataFrame):
            validate_data(self, X, skip_check_array=True, reset=reset)
            return X.rename(columns=str).reset_index(drop=True)
        arr = validate_data(self, X, reset=reset, ensure_all_finite="allow-nan", dtype=np.float64)
        return pd.DataFrame(arr, columns=[f"x{i}" for i in range(arr.shape[1])])

    def _fit(self, X, y, task: str | None) -> "_MetaGenBase":
        self._validate_params()
        frame = self._frame(X, reset=True)
        y = column_or_1d(y, warn=True)
        if len(y) != len(frame):
            raise ValueError(f"X has {len(frame)} rows but y has {len(y)}.")
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        table = make_table(frame.assign(**{_TARGET: y}), target=_TARGET, task=task)
        options = FitOptions(
            time_budget=float(self.time_budget), n_trials=self.n_trials, seed=seed,
            test_size=0.0, max_steps=self.max_steps, use_meta=self.use_meta,
            families=parse_families(self.families), infer_limit=self.infer_limit,
        )
        fitted = fit_table(table, options)
        self.model_ = Predictor(fitted)
        self.leaderboard_ = pd.DataFrame(fitted.leaderboard)
        self.members_ = pd.DataFrame([{"family": m.family, "weight": m.weight, "score": m.score, "trial": m.trial}
                                      for m in fitted.members])
        self.n_trials_ = fitted.provenance["n_trials_complete"] + fitted.provenance["n_trials_pruned"]
        return self

    def _predict_frame(self, X) -> pd.DataFrame:
        check_is_fitted(self, "model_")
        frame = self._frame(X, reset=False)
        return frame.set_axis(self.model_.feature_names, axis=1)


class MetaGenClassifier(ClassifierMixin, _MetaGenBase):
    """Classifier: ``fit(X, y)`` searches the model families for ``time_budget`` seconds and blends the best."""

    def fit(self, X, y) -> "MetaGenClassifier":
        y_arr = column_or_1d(y, warn=True)
        check_classification_targets(y_arr)
        n_classes = len(np.unique(y_arr))
        self._fit(X, y_arr, "binary" if n_classes == 2 else "multiclass")
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, X) -> np.ndarray:
        frame = self._predict_frame(X)
        return self.model_.predict_proba(frame)

    def predict(self, X) -> np.ndarray:
        frame = self._predict_frame(X)
        return self.model_.predict(frame)


class MetaGenRegressor(RegressorMixin, _MetaGenBase):
    """Regressor: ``fit(X, y)`` searches the model families for ``time_budget`` seconds and blends the best."""

    def fit(self, X, y) -> "MetaGenRegressor":
        y_arr = np.asarray(column_or_1d(y, warn=True), dtype=np.float64)
        if not np.all(np.isfinite(y_arr)):
            raise ValueError("Input y contains NaN or infinity; drop those rows first.")
        return self._fit(X, y_arr, "regression")

    def predict(self, X) -> np.ndarray:
        frame = self._predict_frame(X)
        return self.model_.predict(frame)
