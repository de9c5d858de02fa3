"""The proposer's portfolio: a performance table, a greedy pick, and fit trying the pick first."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from metagen import NetConfig
from metagen.fit import first_configs
from metagen.maml import MetaArch, init_params
from metagen.meta_model import MetaModel, load_meta_model, save_meta_model
from metagen.proposer import PerformanceTable, cross_validate_portfolio, greedy_portfolio
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
    table = PerformanceTable([NetConfig(), NetConfig(depth=1), NetConfig(depth=3)], ["a", "b"],
                             np.array([[0.9, 0.2], [0.7, np.nan], [0.8, -0.4]]))
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


def test_meta_portfolio_stores_the_pick_and_fit_tries_it_first(corpus: Path, tmp_path: Path):
    arch = MetaArch(depth=1, width=16, gen_width=8)
    path = save_meta_model(MetaModel({arch.name: (arch, init_params(arch))}), tmp_path / "meta.safetensors")
    out = tmp_path / "table.json"
    run = CliRunner().invoke(app, ["meta-portfolio", "-c", str(corpus), "--meta-model", str(path),
                                   "--candidates", "3", "--size", "2", "--max-steps", "60", "--json", str(out)])
    assert run.exit_code == 0, run.output
    meta = load_meta_model(path)
    assert len(meta.portfolio()) == 2 and all(c.steps <= 60 for c in meta.portfolio())
    assert meta.spec["portfolio_check"]["tables"] == 2
    assert first_configs(meta)[:2] == meta.portfolio() and first_configs(meta)[2].init == arch.name
    assert first_configs(None) == [NetConfig()]
    assert "portfolio" in run.output
