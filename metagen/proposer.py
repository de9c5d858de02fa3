"""The proposer's first form: a zero-shot portfolio across families, learned from a performance table.

Candidate configurations of every family are each scored on many meta-train tables
exactly as ``fit`` scores a trial (same views, same validation plan, same code: the
performance table, with each cell's fit time). A greedy pass then picks the few that
together do best across tables, as auto-sklearn 2.0 and FLAML's zero-shot AutoML do,
and orders them cheapest first. ``fit`` enqueues them before TPE takes over, so a
short budget starts from configurations that were good on many tables.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

from metagen.errors import MetaGenError
from metagen.families import FAMILIES, Candidate, TaskInfo
from metagen.fit import FitOptions, prepare_data
from metagen.meta_model import MetaModel
from metagen.search import TRIAL_ERRORS, TrialIncomplete, quiet_optuna, run_trial
from metagen.table import Table
from task_corpus import TableRef, load_table

CELL_SECONDS = 60.0
"""A candidate's run on one table stops here; what it reached by then is its score."""
CELL_FIELDS = ("table", "candidate", "score", "seconds")


@dataclass
class PerformanceTable:
    """Score of every candidate (rows) on every table (columns), as ``fit`` scores a trial; NaN: failed."""

    candidates: list[Candidate]
    tables: list[str]
    scores: np.ndarray
    seconds: np.ndarray
    """Wall-clock seconds of every cell (all folds), on the machine that built the table."""

    def normalised(self) -> np.ndarray:
        """Per table, 0 for the worst candidate and 1 for the best (failures 0), so tables weigh alike."""
        s = np.nan_to_num(self.scores, nan=-np.inf)
        lo = np.min(np.where(np.isfinite(s), s, np.inf), axis=0)
        hi = np.max(s, axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        return np.where(np.isfinite(s), (s - lo) / span, 0.0)

    def to_json(self) -> dict:
        def plain(a: np.ndarray) -> list:
            return [[None if np.isnan(v) else round(float(v), 5) for v in row] for row in a]

        return {"candidates": [c.to_json() for c in self.candidates], "tables": self.tables,
                "scores": plain(self.scores), "seconds": plain(self.seconds)}


def candidate_configs(families: tuple[str, ...], per_family: int, info: TaskInfo, seed: int = 0,
                      max_steps: int = 1000) -> list[Candidate]:
    """Per family its defaults, then random draws from its space, up to ``per_family`` each."""
    impl = {name: FAMILIES[name](max_steps=max_steps) for name in families}
    out: list[Candidate] = []
    with quiet_optuna():
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for name, family in impl.items():
        mine = [Candidate(name, c) for c in family.defaults(info)]
        tries = 0
        while len(mine) < per_family and tries < 50 * per_family:
            tries += 1
            trial = study.ask()
            cand = Candidate(name, family.suggest(trial, info))
            if cand not in mine:
                mine.append(cand)
        out += mine[:max(per_family, 1)]
    return out


def corpus_table(ref: TableRef, max_rows: int, seed: int = 0) -> Table:
    """A corpus table as ``fit`` reads one, its rows subsampled to ``max_rows`` so each cell stays cheap."""
    source = load_table(ref)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(source.n_rows, min(source.n_rows, max_rows), replace=False))
    return source.to_table(rows)


def _read_cells(path: Path | None) -> dict[tuple[str, int], tuple[float, float]]:
    if path is None or not path.exists():
        return {}
    with path.open(newline="") as fh:
        return {(r["table"], int(r["candidate"])): (float(r["score"]), float(r["seconds"]))
                for r in csv.DictReader(fh)}


def performance_table(
    tables: list[tuple[str, Table]],
    candidates: list[Candidate],
    *,
    seed: int = 0,
    meta: MetaModel | None = None,
    cells_path: Path | None = None,
    on_cell: Callable[[str, int, float], None] | None = None,
) -> PerformanceTable:
    """Score every candidate on every table as a ``fit`` trial is scored.

    With ``cells_path`` every finished cell is appended to that CSV at once, and cells
    already there are not run again, so a killed build continues where it stopped.
    """
    done = _read_cells(cells_path)
    if cells_path is not None and not cells_path.exists():
        cells_path.parent.mkdir(parents=True, exist_ok=True)
        cells_path.write_text(",".join(CELL_FIELDS) + "\n")
    scores = np.full((len(candidates), len(tables)), np.nan)
    seconds = np.full_like(scores, np.nan)
    options = FitOptions(test_size=0.0, seed=seed, use_meta=meta is not None)
    for j, (name, table) in enumerate(tables):
        data = None
        for i, cand in enumerate(candidates):
            if (name, i) not in done:
                if data is None:
                    data = prepare_data(table, options, meta).search
                started = time.monotonic()
                score = np.nan
                try:
                    result = run_trial(data, FAMILIES[cand.family](), cand.config, seed=seed,
                                       deadline=started + CELL_SECONDS)
                    score = result.score if np.isfinite(result.score) else np.nan
                except (*TRIAL_ERRORS, TrialIncomplete, MetaGenError):  # a failed or overlong cell scores as failed
                    pass
                done[(name, i)] = (score, time.monotonic() - started)
                if cells_path is not None:
                    with cells_path.open("a", newline="") as fh:
                        csv.writer(fh).writerow([name, i, score, round(done[(name, i)][1], 4)])
            scores[i, j], seconds[i, j] = done[(name, i)]
            if on_cell is not None:
                on_cell(name, i, scores[i, j])
    return PerformanceTable(candidates, [name for name, _ in tables], scores, seconds)


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


def cheapest_first(picked: list[int], seconds: np.ndarray) -> list[int]:
    """The portfolio in the order ``fit`` tries it: by median fit time, so a short budget finishes some."""
    return sorted(picked, key=lambda i: float(np.nanmedian(seconds[i])) if np.isfinite(seconds[i]).any() else np.inf)


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
