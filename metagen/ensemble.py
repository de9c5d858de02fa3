"""Greedy ensemble selection with replacement (Caruana et al., 2004) over any family's predictions."""

from __future__ import annotations

import numpy as np

from metagen.metrics import selection_score

ROUNDS = 25


def select_ensemble(preds: list[np.ndarray], y: np.ndarray, task: str, rounds: int = ROUNDS) -> list[tuple[int, float]]:
    """(index, weight) pairs whose blend of ``preds`` (out-of-fold predictions of the same rows) scores best.

    ``preds`` are ordered best first, so ties keep the better single model. Each round
    adds one copy of the member that helps the blend most; a single member comes back
    when no blend scores higher.
    """
    counts = np.zeros(len(preds))
    blend = np.zeros_like(preds[0], dtype=np.float64)
    best_score, best_counts = -np.inf, counts.copy()
    for n in range(rounds):
        scores = [selection_score(task, y, (blend * n + p) / (n + 1)) for p in preds]
        j = int(np.nanargmax(scores))
        counts[j] += 1
        blend = (blend * n + preds[j]) / (n + 1)
        if scores[j] > best_score:
            best_score, best_counts = scores[j], counts.copy()
    total = best_counts.sum()
    return [(int(j), float(best_counts[j] / total)) for j in np.flatnonzero(best_counts)]
