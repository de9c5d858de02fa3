"""The proposer's first form: a zero-shot portfolio learned from a performance table.

Candidate configurations are each trained on many meta-train tables and scored on
held-back rows (the performance table). A greedy pass then picks the few that together
do best across tables, as auto-sklearn 2.0 and FLAML's zero-shot AutoML do. ``fit``
enqueues them before TPE takes over, so a short budget starts from configurations that
were good on many tables instead of from one default.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import optuna

from metagen.config import NetConfig, suggest_config
from metagen.errors import MetaGenError
from metagen.fit import FitOptions, prepare_data
from metagen.search import quiet_optuna, train_config
from metagen.table import Table
from task_corpus import TableRef, load_table

CELL_SECONDS = 60.0
"""A candidate's run on one table stops here; what it reached by then is its score."""


@dataclass
class PerformanceTable:
    """Held-back score of every candidate configuration (rows) on every table (columns); NaN: failed."""

    configs: list[NetConfig]
    tables: list[str]
    scores: np.ndarray

    def normalised(self) -> np.ndarray:
        """Per table, 0 for the worst candidate and 1 for the best (failures 0), so tables weigh alike."""
        s = np.nan_to_num(self.scores, nan=-np.inf)
        lo = np.min(np.where(np.isfinite(s), s, np.inf), axis=0)
        hi = np.max(s, axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        return np.where(np.isfinite(s), (s - lo) / span, 0.0)

    def to_json(self) -> dict:
        return {"configs": [c.to_json() for c in self.configs], "tables": self.tables,
                "scores": [[None if np.isnan(v) else float(v) for v in row] for row in self.scores]}


def candidate_configs(n: int, seed: int = 0, max_steps: int = 1000) -> list[NetConfig]:
    """The default configuration, then ``n - 1`` random draws from the search space."""
    with quiet_optuna():
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    configs = [NetConfig().with_(steps=min(NetConfig().steps, max_steps))]
    while len(configs) < n:
        config = suggest_config(study.ask(), max_steps)
        if config not in configs:
            configs.append(config)
    return configs


def corpus_table(ref: TableRef, max_rows: int, seed: int = 0) -> Table:
    """A corpus table as ``fit`` reads one, its rows subsampled to ``max_rows`` so each cell stays cheap."""
    source = load_table(ref)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(source.n_rows, min(source.n_rows, max_rows), replace=False))
    return source.to_table(rows)


def performance_table(
    tables: list[tuple[str, Table]],
    configs: list[NetConfig],
    *,
    seed: int = 0,
    on_cell: Callable[[str, int, float], None] | None = None,
) -> PerformanceTable:
    """Train every configuration on every table's fit rows; score it on its validation rows."""
    scores = np.full((len(configs), len(tables)), np.nan)
    options = FitOptions(test_size=0.0, seed=seed)
    for j, (name, table) in enumerate(tables):
        data = prepare_data(table, options).search
        for i, config in enumerate(configs):
            try:
                result = train_config(data, config, seed=seed, deadline=time.monotonic() + CELL_SECONDS)
                scores[i, j] = result.score if np.isfinite(result.score) else np.nan
            except (RuntimeError, MetaGenError):  # a diverging or unusable run scores as failed
                pass
            if on_cell is not None:
                on_cell(name, i, scores[i, j])
    return PerformanceTable(configs, [name for name, _ in tables], scores)


def greedy_portfolio(normalised: np.ndarray, size: int) -> list[int]:
    """Indices of ``size`` configurations whose best-of on each table has the highest mean."""
    chosen: list[int] = []
    best = np.zeros(normalised.shape[1])
    for _ in range(min(size, len(normalised))):
        gains = [np.mean(np.maximum(best, row)) if i not in chosen else -np.inf for i, row in enumerate(normalised)]
        i = int(np.argmax(gains))
        chosen.append(i)
        best = np.maximum(best, normalised[i])
    return chosen


def cross_validate_portfolio(normalised: np.ndarray, size: int, folds: int = 2, seed: int = 0) -> dict[str, float]:
    """Mean best-of normalised score on tables the portfolio was not chosen on, against the default alone
    (candidate 0) and against ``size`` random candidates: does the portfolio generalise across tables?"""
    rng = np.random.default_rng(seed)
    n_tables = normalised.shape[1]
    order = rng.permutation(n_tables)
    portfolio, default, random_k = [], [], []
    for f in range(folds):
        held = order[f::folds]
        train = np.setdiff1d(order, held)
        picked = greedy_portfolio(normalised[:, train], size)
        portfolio += list(normalised[picked][:, held].max(0))
        default += list(normalised[0, held])
        drawn = rng.choice(len(normalised), size=(50, min(size, len(normalised))), replace=True)
        random_k += list(np.mean([normalised[d][:, held].max(0) for d in drawn], axis=0))
    return {"portfolio": float(np.mean(portfolio)), "default": float(np.mean(default)),
            "random_k": float(np.mean(random_k)), "tables": n_tables, "size": size}
