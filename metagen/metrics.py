"""Scores used for selection (ROC-AUC or R², higher is better) and for reports."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, log_loss, mean_squared_error, r2_score


def roc_auc(y: np.ndarray, proba: np.ndarray) -> float:
    """Binary AUC, or macro one-vs-rest over the classes present in ``y``.

    Small validation splits often miss a rare class; those classes are skipped
    instead of failing the whole score.
    """
    if proba.shape[1] == 2:
        return _auc(y == 1, proba[:, 1]) if len(np.unique(y)) == 2 else float("nan")
    aucs = [_auc(y == k, proba[:, k]) for k in range(proba.shape[1]) if 0 < np.sum(y == k) < len(y)]
    return float(np.mean(aucs)) if aucs else float("nan")


def _auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC as the Mann-Whitney statistic on average ranks (ties count half), as scikit-learn computes it:
    one sort instead of a curve, which matters when ensemble selection scores thousands of blends."""
    ranks = rankdata(score)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def selection_score(task: str, y: np.ndarray, pred: np.ndarray) -> float:
    """The one number the search maximises: ROC-AUC for classes, R² for regression."""
    if task == "regression":
        return float(r2_score(y, pred))
    return roc_auc(y, pred)


def all_metrics(task: str, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    if task == "regression":
        return {
            "r2": float(r2_score(y, pred)),
            "rmse": float(np.sqrt(mean_squared_error(y, pred))),
        }
    labels = np.arange(pred.shape[1])
    return {
        "roc_auc": roc_auc(y, pred),
        "log_loss": float(log_loss(y, pred, labels=labels)),
        "accuracy": float(accuracy_score(y, pred.argmax(axis=1))),
    }


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, bins: int = 15) -> float:
    """How far the top class's probability is from how often it is right, averaged over equal-width bins."""
    confidence, right = proba.max(axis=1), (proba.argmax(axis=1) == y).astype(float)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    gaps = [abs(confidence[which == b].mean() - right[which == b].mean()) * np.mean(which == b)
            for b in range(bins) if np.any(which == b)]
    return float(np.sum(gaps))


def metric_name(task: str) -> str:
    return "r2" if task == "regression" else "roc_auc"
