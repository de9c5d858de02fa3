"""Greedy ensemble selection with replacement (Caruana et al., 2004) over any family's predictions."""

from __future__ import annotations

import numpy as np

from metagen.metrics import selection_score

ROUNDS = 25


def select_ensemble(preds: list[np.ndarray], y: np.ndarray, task: str, rounds: int = ROUNDS,
                    costs: list[float] | None = None, limit: float | None = None) -> list[tuple[int, float]]:
    """(index, weight) pairs whose blend of ``preds`` (out-of-fold predictions of the same rows) scores best.

    ``preds`` are ordered best first, so ties keep the better single model. Each round
    adds one copy of the member that helps the blend most; a single member comes back
    when no blend scores higher. With ``limit``, a member joins only while the summed
    ``costs`` (seconds per predicted row) of the members chosen stay within it; when no
    single member is within it, the cheapest one is the ensemble.
    """
    counts = np.zeros(len(preds))
    allowed = np.ones(len(preds), dtype=bool)
    if limit is not None and costs is not None:
        allowed = np.asarray(costs) <= limit
        if not allowed.any():
            return [(int(np.argmin(costs)), 1.0)]
    blend = np.zeros_like(preds[0], dtype=np.float64)
    best_score, best_counts = -np.inf, counts.copy()
    for n in range(rounds):
        scores = [selection_score(task, y, (blend * n + p) / (n + 1)) if ok else -np.inf
                  for p, ok in zip(preds, allowed)]
        j = int(np.nanargmax(scores))
        counts[j] += 1
        if limit is not None and costs is not None:
            spent = float(np.sum(np.asarray(costs)[counts > 0]))
            allowed &= (counts > 0) | (spent + np.asarray(costs) <= limit)
        blend = (blend * n + preds[j]) / (n + 1)
        if scores[j] > best_score:
            best_score, best_counts = scores[j], counts.copy()
    total = best_counts.sum()
    return [(int(j), float(best_counts[j] / total)) for j in np.flatnonzero(best_counts)]
