"""The task encoder: what the proposer knows about a table before any trial runs.

A table is read as a set: every feature is a statistic over rows, pooled over
columns (mean and spread), so row order, column order, the number of columns and
the number of classes change nothing. Beside the cheap meta-features sit
landmarkers (a depth-1 tree, a linear probe, a nearest neighbour: how much a simple
model already finds) and, where the meta-model has one, the learned task embedding
that its FiLM modulation reads, so the proposer and the network's start share one
encoder. Everything runs on at most ``rows`` rows: a table is described as the
performance table's own tables were, whatever its size.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from metagen.maml import column_stats, task_embedding
from metagen.meta_model import MetaModel
from metagen.metrics import selection_score
from metagen.preprocess import fit_preprocessor
from metagen.table import Table

N_COLUMN_STATS = 7
"""``column_stats`` without its constant last entry."""
BASE_NAMES = [
    "regression", "multiclass", "log_rows", "log_columns", "log_classes", "rows_per_column",
    "categorical_share", "missing_share", "minority_share", "class_entropy",
    *[f"columns_{k}_{s}" for s in ("mean", "std") for k in range(N_COLUMN_STATS)],
    "stump", "linear", "nearest", "stump_gain", "linear_gain",
]
LANDMARK_FOLDS = 3


def feature_names(meta: MetaModel | None) -> list[str]:
    """Names of ``task_features``' entries: the base ones, then the learned embedding's (if any)."""
    member = _embedding_member(meta)
    width = 0 if member is None else int(meta.members[member][1]["gen.w1"].shape[1])  # type: ignore[union-attr]
    return BASE_NAMES + [f"embedding_{k}" for k in range(width)]


def _embedding_member(meta: MetaModel | None) -> str | None:
    if meta is None:
        return None
    return next((name for name, (arch, _) in meta.members.items() if arch.embeds_columns), None)


def task_features(table: Table, meta: MetaModel | None = None, rows: int = 500, seed: int = 0,
                  among: np.ndarray | None = None) -> np.ndarray:
    """The table as one vector (``feature_names(meta)`` order), from at most ``rows`` of its rows.

    Up to ``rows`` rows the vector does not change when rows or columns are permuted (beyond
    float rounding); a larger table is described by a seeded random subset of its rows
    (of ``among`` when given: the training rows, never the held-back ones).
    """
    among = np.arange(table.n_rows) if among is None else np.asarray(among)
    take = np.sort(np.random.default_rng(seed).choice(among, min(rows, len(among)), replace=False))
    X = fit_preprocessor(table.X.iloc[take], table.columns).transform(table.X.iloc[take]).astype(np.float64)
    y = table.y[take]
    # A canonical row order (by each row's sorted values, then its target), so the landmarkers' folds do
    # not depend on how the rows or the columns came.
    canonical = np.lexsort((y, np.sort(X, axis=1).sum(1)))
    X, y = X[canonical], y[canonical]
    regression = table.task == "regression"
    n_classes = 0 if regression else len(table.classes or [])
    if regression:
        y = (y - y.mean()) / (y.std() or 1.0)
    kinds = [c.kind for c in table.columns if c.used]
    n_cols = max(1, len(kinds))
    if regression:
        minority, entropy = 0.0, 0.0
    else:
        share = np.bincount(y, minlength=n_classes) / len(y)
        share = share[share > 0]
        minority = float(share.min() * len(share))
        entropy = float(-(share * np.log(share)).sum() / np.log(max(2, len(share))))
    stats = _column_stats(X, y, regression, max(n_classes, 1))
    marks = _landmarks(X, y, table.task, seed)
    base = [
        float(regression), float(n_classes > 2), np.log10(len(take)), np.log10(n_cols), np.log10(max(1, n_classes)),
        np.log10(len(take) / n_cols), sum(k in ("categorical", "boolean") for k in kinds) / n_cols,
        float(np.mean([c.n_missing for c in table.columns if c.used] or [0])) / max(1, table.n_rows),
        minority, entropy, *stats.mean(0), *stats.std(0),
        *marks, marks[0] - _chance(table.task), marks[1] - marks[0],
    ]
    return np.concatenate([np.asarray(base, dtype=np.float64), _embedding(meta, X, y, regression, n_classes)])


def _column_stats(X: np.ndarray, y: np.ndarray, regression: bool, n_classes: int) -> np.ndarray:
    """(columns, N_COLUMN_STATS): moments and target relation of each column, as the meta-model computes them."""
    with torch.no_grad():
        stats = column_stats(torch.from_numpy(X), torch.from_numpy(y.astype(np.float64 if regression else np.int64)),
                             torch.ones(len(y), dtype=torch.float64), torch.ones(X.shape[1], dtype=torch.float64),
                             torch.ones(n_classes, dtype=torch.float64), regression)
    return stats[:, :N_COLUMN_STATS].numpy()


def _embedding(meta: MetaModel | None, X: np.ndarray, y: np.ndarray, regression: bool, n_classes: int) -> np.ndarray:
    member = _embedding_member(meta)
    if member is None:
        return np.zeros(0)
    arch, theta = meta.members[member]  # type: ignore[union-attr]
    with torch.no_grad():
        xs = torch.from_numpy(X.astype(np.float32))
        ys = torch.from_numpy(y.astype(np.float32 if regression else np.int64))
        out = task_embedding(theta, xs, ys, torch.ones(len(y)), torch.ones(X.shape[1]),
                             torch.ones(max(1, n_classes)), regression)
    return out.double().numpy()


def _chance(task: str) -> float:
    return 0.0 if task == "regression" else 0.5


def _landmarks(X: np.ndarray, y: np.ndarray, task: str, seed: int) -> list[float]:
    """Cross-validated scores (ROC-AUC or R², as trials are scored) of three models that take milliseconds."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import KFold, StratifiedKFold
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    regression = task == "regression"
    models = ([DecisionTreeRegressor(max_depth=1, random_state=seed), Ridge(alpha=1.0), KNeighborsRegressor(n_neighbors=1, metric="manhattan", algorithm="brute")] if regression
              else [DecisionTreeClassifier(max_depth=1, random_state=seed), LogisticRegression(max_iter=200),
                    KNeighborsClassifier(n_neighbors=1, metric="manhattan", algorithm="brute")])
    n_out = 1 if regression else int(y.max()) + 1
    smallest = len(y) if regression else int(np.bincount(y).min())
    folds = min(LANDMARK_FOLDS, smallest)
    if folds < 2:
        return [_chance(task)] * len(models)
    splitter = (KFold if regression else StratifiedKFold)(folds, shuffle=True, random_state=seed)
    # On a grid of 2^-16 the nearest neighbour's Manhattan distances are exact sums, so ties break alike
    # whatever the column order.
    X = np.round(X * 2.0**16) / 2.0**16
    out = []
    for model in models:
        pred = np.zeros(len(y)) if regression else np.zeros((len(y), n_out))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for fit_rows, valid_rows in splitter.split(X, y):
                fitted = model.fit(X[fit_rows], y[fit_rows])
                if regression:
                    pred[valid_rows] = fitted.predict(X[valid_rows])
                else:
                    pred[np.ix_(valid_rows, fitted.classes_)] = fitted.predict_proba(X[valid_rows])
        score = selection_score(task, y, pred)
        out.append(float(np.clip(score, -1.0, 1.0)) if np.isfinite(score) else _chance(task))
    return out

