"""How trials are scored: k-fold out-of-fold predictions on small tables, one holdout on large ones.

A 20 % holdout of a 200-row table is 40 rows, and choosing among trials on 40 rows
is noise. Below ``KFOLD_MAX_ROWS`` every trial trains one model per fold and is
scored on the predictions each row got from the model that did not see it; the
final member averages its fold models, so it has learned from every row. Above it,
one split: the member is trained on the fit rows and refit on every row at the end.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from metagen.errors import DataError

KFOLD_MAX_ROWS = 5000
N_FOLDS = 5
VALID_SIZE = 0.2
# Validation rows are capped: 10,000 rows pin a score down to about 0.01 already.
MAX_HOLDOUT_ROWS = 10_000


@dataclass(frozen=True)
class ValidationPlan:
    kind: str
    """``kfold`` or ``holdout``."""
    folds: list[tuple[np.ndarray, np.ndarray]]
    """(fit rows, scored rows) per fold, as indices into the training rows."""
    score_rows: np.ndarray
    """Rows whose predictions score a trial: every row (k-fold) or the holdout rows."""

    @property
    def refit(self) -> bool:
        """Whether a member must be trained again on every row to have learned from all of them."""
        return self.kind == "holdout"


def _stratify(y: np.ndarray, task: str) -> np.ndarray | None:
    return y if task != "regression" and np.bincount(y).min() >= 2 else None


def holdout(n: int, y: np.ndarray, task: str, size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded (stratified) split of ``range(n)``; at least one held row per class, at most ``MAX_HOLDOUT_ROWS``."""
    stratify = _stratify(y, task)
    n_hold = min(max(1, int(round(size * n))), MAX_HOLDOUT_ROWS)
    if stratify is not None:
        n_hold = max(n_hold, len(np.unique(y)))
    if n - n_hold < 2:
        raise DataError(f"The table has only {n} usable rows.", "metagen needs at least a few rows per class to learn.")
    a, b = train_test_split(np.arange(n), test_size=n_hold, random_state=seed, stratify=stratify)
    return np.sort(a), np.sort(b)


def make_plan(y: np.ndarray, task: str, seed: int, *, n_folds: int = N_FOLDS,
              kfold_max_rows: int = KFOLD_MAX_ROWS, valid_size: float = VALID_SIZE) -> ValidationPlan:
    n = len(y)
    if n <= kfold_max_rows and n_folds >= 2:
        stratify = _stratify(y, task)
        splitter = (KFold if stratify is None else StratifiedKFold)(min(n_folds, n), shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a class with fewer rows than folds: some folds score none of it
            folds = [(np.sort(a), np.sort(b)) for a, b in splitter.split(np.zeros(n), stratify)]
        return ValidationPlan("kfold", folds, np.arange(n))
    fit_rows, valid_rows = holdout(n, y, task, valid_size, seed)
    return ValidationPlan("holdout", [(fit_rows, valid_rows)], valid_rows)
