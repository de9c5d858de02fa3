"""``metagen bench propose``: does the task-conditioned proposer pick better than a static choice, on unseen tables?

On every table of a suite the candidates of each strategy are run live, each scored
out-of-fold exactly as ``fit`` scores a trial (every row is predicted by a model that
did not see it): the shipped proposer's top-1 and top-k; the static greedy portfolio's
(built from the performance table inside the meta-model; its top-1 is the best-on-average single
configuration); a fixed default (HistGradientBoosting's); and k random configurations
of the pool. Scores are normalised per table between the worst and the best of every
configuration run there, so ``best`` is 1 and the gap closed reads
``(top-k - default) / (1 - default)`` on the means.
"""

from __future__ import annotations

import numpy as np

from metagen.families import ALL, Candidate
from metagen.fit import FitOptions, prepare_data, rank_proposals
from metagen.meta_model import MetaModel
from metagen.performance_table import candidate_key, corpus_table, run_cell, stored_table
from metagen.proposer import TOP_K, PortfolioProposer, Proposer, load_proposer
from task_corpus import TableRef

RANDOM_DRAWS = 5


def static_portfolio(meta: MetaModel, proposer: Proposer) -> list[Candidate]:
    """The greedy portfolio of the performance table inside the meta-model, in its greedy order."""
    table = stored_table(meta, proposer.pool)
    if table is None:
        raise ValueError("the meta-model holds no performance table")
    return [proposer.pool[i] for i in PortfolioProposer.train(table, proposer.rows, size=TOP_K).portfolio]


def bench_propose(refs: list[TableRef], meta: MetaModel, max_rows: int | None = None, seed: int = 0,
                  on_table=None) -> list[dict]:  # noqa: ANN001
    """One row per table: normalised scores of each strategy's picks (see the module docstring)."""
    proposer = load_proposer(meta)
    if proposer is None:
        raise ValueError("the meta-model holds no proposer")
    portfolio = static_portfolio(meta, proposer)
    rows = max_rows or proposer.rows
    default = next(c for c in proposer.pool if c.family == "gbdt")
    out = []
    for ref in refs:
        table = corpus_table(ref, rows, seed)
        prepared = prepare_data(table, FitOptions(seed=seed, families=ALL), meta)
        ranked = [p.candidate for p in rank_proposals(table, prepared, meta, ALL, seed)]
        rng = np.random.default_rng([seed, len(out)])
        drawn = [proposer.pool[i] for i in rng.choice(len(proposer.pool), RANDOM_DRAWS, replace=False)]
        picks = {"ranking": ranked[:TOP_K], "portfolio": portfolio[:TOP_K], "default": [default], "random": drawn}
        scores: dict[str, float] = {}
        for cand in {candidate_key(c): c for group in picks.values() for c in group}.values():
            scores[candidate_key(cand)] = run_cell(prepared.search, cand, seed)[0]
        finite = [s for s in scores.values() if np.isfinite(s)]
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)

        def norm(c: Candidate) -> float:
            s = scores[candidate_key(c)]
            return (s - lo) / (hi - lo) if np.isfinite(s) and hi > lo else 0.0

        row: dict = {"table": ref.name, "configs_run": len(scores), "best_score": hi}
        for name in ("ranking", "portfolio", "random"):
            row[f"{name}_top1"] = norm(picks[name][0])
            row[f"{name}_top{TOP_K}"] = max(norm(c) for c in picks[name])
        row["default"] = norm(default)
        out.append(row)
        if on_table is not None:
            on_table(row)
    return out


def summary(rows: list[dict]) -> dict:
    """Means over tables, and the share of the default's gap to the best that the proposer's top-k closes on them
    (per table the ratio is unstable where the default is near the best)."""
    keys = [k for k in rows[0] if k not in ("table", "best_score", "configs_run")]
    mean = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}
    default, top_k = mean["default"], mean[f"ranking_top{TOP_K}"]
    mean["gap_closed_of_mean"] = round((top_k - default) / (1 - default), 4) if default < 1 else 1.0
    mean["tables"] = len(rows)
    return mean


STRATEGIES = {"ranking": "ranking proposer (task-conditioned)", "portfolio": "static greedy portfolio",
              "default": "default (HistGradientBoosting)", "random": "random configurations"}


def strategy_rows(mean: dict) -> list[dict]:
    """Means as one row per strategy (top-1, best of top-k), for a table narrow enough for a terminal."""
    rows = []
    for key, name in STRATEGIES.items():
        top1 = mean.get(f"{key}_top1", mean.get(key))
        rows.append({"strategy": name, "top-1": round(float(top1), 3),
                     f"best of top-{TOP_K}": round(float(mean.get(f"{key}_top{TOP_K}", top1)), 3)})
    return rows
