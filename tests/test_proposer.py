"""The proposer's portfolio: a performance table, a greedy pick, and fit trying the pick first."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from metagen import FitOptions, fit_table, make_table
from metagen.families import Candidate, TaskInfo
from metagen.fit import first_candidates
from metagen.maml import MetaArch, init_params
from metagen.meta_model import MetaModel, load_meta_model, save_meta_model
from metagen.proposer import (
    PerformanceTable,
    cheapest_first,
    cross_validate_portfolio,
    greedy_portfolio,
    performance_table,
)
from metagen_cli.app import app


def test_greedy_portfolio_picks_complementary_configurations():
    normalised = np.array([
        [0.9, 0.9, 0.0, 0.0],  # good on the first half
        [0.8, 0.8, 0.1, 0.1],  # a bit worse there, as weak elsewhere
        [0.0, 0.0, 1.0, 1.0],  # the only good one on the second half
        [0.6, 0.6, 0.6, 0.6],  # best single candidate
    ])
    assert greedy_portfolio(normalised, 1) == [3]
    assert greedy_portfolio(normalised, 3)[:3] == [3, 2, 0]


def test_normalised_scores_weigh_tables_alike_and_failures_count_as_worst():
    candidates = [Candidate("linear", {"strength": s, "scaling": "quantile"}) for s in (1.0, 10.0, 100.0)]
    scores = np.array([[0.9, 0.2], [0.7, np.nan], [0.8, -0.4]])
    table = PerformanceTable(candidates, ["a", "b"], scores, np.ones_like(scores))
    assert np.allclose(table.normalised(), [[1.0, 1.0], [0.0, 0.0], [0.5, 0.0]])


def test_cross_validated_portfolio_beats_the_default_when_tables_differ():
    rng = np.random.default_rng(0)
    kinds = rng.integers(0, 3, size=40)  # three kinds of tables, each with its own best configuration
    normalised = rng.uniform(0, 0.5, size=(12, 40))
    for t, k in enumerate(kinds):
        normalised[k + 1, t] = 1.0
    check = cross_validate_portfolio(normalised, 3)
    assert check["portfolio"] > 0.95 and check["portfolio"] > check["random_k"] > check["default"] - 0.2


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("METAGEN_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    root = tmp_path / "corpus"
    root.mkdir()
    for name, target in (("lin", lambda X: (X[:, 0] > 0).astype(int)), ("xor", lambda X: (X[:, 0] * X[:, 1] > 0))):
        X = rng.normal(size=(160, 3))
        pd.DataFrame(X, columns=list("abc")).assign(target=target(X).astype(int)).to_csv(
            root / f"{name}.tsv.gz", sep="\t", index=False)
    return root


def test_portfolio_is_tried_cheapest_first():
    seconds = np.array([[5.0, 7.0], [0.1, 0.3], [np.nan, np.nan], [1.0, 2.0]])
    assert cheapest_first([0, 2, 3, 1], seconds) == [1, 3, 0, 2]


def test_performance_table_resumes_cell_by_cell(corpus: Path, tmp_path: Path):
    from metagen.table import read_table

    tables = [(p.name, read_table(p)) for p in sorted(corpus.glob("*.tsv.gz"))]
    candidates = [Candidate("linear", {"strength": 1.0, "scaling": "quantile"}),
                  Candidate("gbdt", {"learning_rate": 0.1, "max_iter": 50, "max_leaf_nodes": 8, "min_samples_leaf": 5,
                                     "l2_regularization": 1e-6, "max_features": 1.0, "early_stopping": False})]
    cells = tmp_path / "cells.csv"
    first = performance_table(tables[:1], candidates, cells_path=cells)
    ran: list[tuple[str, int]] = []
    second = performance_table(tables, candidates, cells_path=cells, on_cell=lambda t, i, s: ran.append((t, i)))
    assert np.array_equal(second.scores[:, :1], first.scores) and np.isfinite(second.scores).all()
    assert len(cells.read_text().splitlines()) == 1 + 4  # the first table's cells were not run again
    assert len(ran) == 4 and (second.seconds > 0).all()


def test_meta_portfolio_stores_the_pick_and_fit_tries_it_first(corpus: Path, tmp_path: Path):
    arch = MetaArch(depth=1, width=16, gen_width=8)
    path = save_meta_model(MetaModel({arch.name: (arch, init_params(arch))}), tmp_path / "meta.safetensors")
    out = tmp_path / "table.json"
    run = CliRunner().invoke(app, ["meta-portfolio", "-c", str(corpus), "--meta-model", str(path),
                                   "--families", "linear,gbdt,mlp", "--per-family", "2", "--size", "3",
                                   "--max-steps", "60", "--json", str(out)])
    assert run.exit_code == 0, run.output
    meta = load_meta_model(path)
    portfolio = [Candidate.from_json(c) for c in meta.portfolio()]
    assert len(portfolio) == 3 and all(c.family in ("linear", "gbdt", "mlp") for c in portfolio)
    assert all(c.config["steps"] <= 60 for c in portfolio if c.family == "mlp")
    assert meta.spec["portfolio_check"]["tables"] == 2
    info = TaskInfo("binary", 2, 100, 3, meta=meta)
    first = first_candidates(meta, ("linear", "gbdt", "forest", "mlp"), info)
    assert first[:3] == portfolio and any(c.config.get("init") == arch.name for c in first)
    assert [c.family for c in first_candidates(None, ("mlp", "gbdt"), info)][:2] == ["gbdt", "mlp"]
    assert "portfolio" in run.output
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(80, 3)), columns=list("abc"))
    fitted = fit_table(make_table(frame.assign(target=(frame["a"] > 0).astype(int))),
                       FitOptions(n_trials=3, max_steps=60), meta=meta)
    tried = sorted(fitted.leaderboard, key=lambda r: r["trial"])
    assert [Candidate(r["family"], r["config"]) for r in tried] == portfolio
