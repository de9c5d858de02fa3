"""The proposer: a sparse performance table built cell by cell, a task encoder, two proposers, and fit using them."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from metagen import FitOptions, fit_table, make_table
from metagen.families import ALL, FAMILIES, Candidate, TaskInfo
from metagen.fit import first_candidates, prepare_data, rank_proposals
from metagen.maml import MetaArch, init_params
from metagen.meta_model import MetaModel, load_meta_model, save_meta_model
from metagen.performance_table import (
    Cell,
    PerformanceTable,
    build_cells,
    candidate_key,
    candidate_pool,
    cells_for_table,
    read_cells,
    stored_table,
    write_cells,
)
from metagen.proposer import (
    PortfolioProposer,
    Proposal,
    RankingProposer,
    greedy_portfolio,
    load_proposer,
    order_by_gain,
    store_proposer,
)
from metagen.search import run_trial
from metagen.task_features import feature_names, task_features
from metagen_cli.app import app

LINEAR = [Candidate("linear", {"strength": s, "scaling": "quantile"}) for s in (0.01, 1.0, 100.0)]


@pytest.fixture
def meta() -> MetaModel:
    arch = MetaArch(depth=1, width=16, gen_width=8, front="pca", film=True)
    return MetaModel({arch.name: (arch, init_params(arch))})


def frame(rows: int, cols: int, kind: str, seed: int = 0, classes: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, cols))
    signal = X[:, 0] + 0.5 * X[:, -1]
    if kind == "regression":
        y = signal + 0.1 * rng.normal(size=rows)
    else:
        y = np.digitize(signal, np.quantile(signal, np.linspace(0, 1, classes + 1)[1:-1]))
    return pd.DataFrame(X, columns=[f"c{j}" for j in range(cols)]).assign(target=y)


def test_encoder_is_invariant_to_row_and_column_order(meta: MetaModel):
    table = make_table(frame(150, 6, "binary").assign(kind=np.tile(["a", "b", "c"], 50)), target="target")
    f = task_features(table, meta)
    assert len(f) == len(feature_names(meta)) and np.isfinite(f).all()
    assert any(n.startswith("embedding_") for n in feature_names(meta))  # the FiLM task embedding, shared
    order = np.random.default_rng(1).permutation(table.n_rows)
    rows = dataclasses.replace(table, X=table.X.iloc[order].reset_index(drop=True), y=table.y[order])
    cols = dataclasses.replace(table, X=table.X[table.X.columns[::-1]], columns=table.columns[::-1])
    assert np.allclose(task_features(rows, meta), f, atol=1e-5)
    assert np.allclose(task_features(cols, meta), f, atol=1e-5)
    other = make_table(frame(150, 6, "binary", seed=5).assign(target=lambda d: (d["c2"] > 0).astype(int)), "target")
    assert not np.allclose(task_features(other, meta), f, atol=1e-3)  # it does describe the table


def _planted_table(n_tables: int = 40, seed: int = 0) -> tuple[PerformanceTable, np.ndarray]:
    """Tables of two kinds (told apart by one task feature); LINEAR[0] is best on one kind, LINEAR[2] on the other."""
    rng = np.random.default_rng(seed)
    kinds = rng.integers(0, 2, n_tables)
    features = np.column_stack([kinds + 0.1 * rng.normal(size=n_tables), rng.normal(size=(n_tables, 3))])
    scores = rng.uniform(0.5, 0.6, size=(3, n_tables))
    scores[np.where(kinds == 0, 0, 2), np.arange(n_tables)] = 0.9
    table = PerformanceTable(LINEAR, [f"t{j}" for j in range(n_tables)], scores, np.full_like(scores, 0.2))
    return table, features


def test_ranking_proposer_ranks_the_planted_best_first_where_a_static_portfolio_cannot():
    table, features = _planted_table()
    ranker = RankingProposer.train(table, features, rows=500, epochs=300)
    for kind, best in ((0, 0), (1, 2)):
        probe = np.array([kind, 0.0, 0.0, 0.0])
        top = ranker.propose(probe, ("linear",), n_rows=100)[0]
        assert top.candidate == LINEAR[best] and top.score > 0.7 and 0 < top.seconds < 1
    static = PortfolioProposer.train(table, rows=500, size=1)
    first = {static.propose(np.array([k, 0.0, 0, 0]), ("linear",), 100)[0].candidate for k in (0, 1)}
    assert len(first) == 1  # the same pick for both kinds


def test_proposers_round_trip_through_the_meta_model_file(tmp_path: Path, meta: MetaModel):
    table, features = _planted_table()
    for proposer in (RankingProposer.train(table, features, rows=500, epochs=20), PortfolioProposer.train(table, 500)):
        store_proposer(meta, proposer, check={"ranking_top1": 1.0})
        path = save_meta_model(meta, tmp_path / f"{proposer.kind}.safetensors")
        loaded = load_proposer(load_meta_model(path))
        assert type(loaded) is type(proposer) and loaded.pool == proposer.pool
        for got, want in zip(loaded.predict(features[0]), proposer.predict(features[0]), strict=True):
            assert np.allclose(got, want, atol=1e-6)
    assert list(load_meta_model(path).members) == list(meta.members)


def test_greedy_portfolio_picks_complementary_configurations_and_fills_gaps():
    normalised = np.array([
        [0.9, 0.9, 0.0, 0.0],
        [0.8, 0.8, 0.1, 0.1],
        [0.0, np.nan, 1.0, 0.9],  # not run on the second table: counts as its mean elsewhere
        [0.7, 0.7, 0.7, 0.7],
    ])
    assert greedy_portfolio(normalised, 1) == [3]
    assert greedy_portfolio(normalised, 3) == [3, 2, 0]


def test_normalised_scores_weigh_tables_alike_failures_worst_and_not_run_unknown():
    scores = np.array([[0.9, 0.2], [0.7, np.nan], [0.8, np.nan]])
    ran = np.array([[True, True], [True, True], [True, False]])
    table = PerformanceTable(LINEAR, ["a", "b"], scores, np.ones_like(scores), ran)
    norm = table.normalised()
    assert np.allclose(norm[:, 0], [1.0, 0.0, 0.5]) and norm[1, 1] == 0.0 and np.isnan(norm[2, 1])


def test_order_by_gain_starts_cheap_skips_what_cannot_finish_and_what_adds_nothing():
    def proposal(cand: Candidate, draws: list[float], seconds: float) -> Proposal:
        return Proposal(cand, float(np.mean(draws)), seconds, float(np.std(draws)), np.array(draws))

    slow_best = proposal(LINEAR[0], [0.95, 0.9, 1.0], 30.0)
    quick_good = proposal(LINEAR[1], [0.85, 0.8, 0.9], 0.5)
    near_copy = proposal(Candidate("linear", {"strength": 1.1, "scaling": "quantile"}), [0.85, 0.8, 0.9], 0.5)
    other = proposal(LINEAR[2], [0.3, 0.95, 0.2], 0.4)  # weak on average, best in one draw
    assert [p.candidate for p in order_by_gain([slow_best, quick_good, near_copy, other], 10.0, 5)] == \
        [LINEAR[1], LINEAR[2], near_copy.candidate]  # the slow one does not fit in 5 s; the near copy adds nothing
    assert order_by_gain([slow_best, quick_good, other], 200.0, 5) == [quick_good, other, slow_best]


def test_every_table_runs_the_defaults_and_an_even_draw(meta: MetaModel):
    pool = candidate_pool(ALL, 6, TaskInfo("binary", 2, 100, 3, meta=meta), max_steps=50)
    assert len({candidate_key(c) for c in pool.candidates}) == len(pool.candidates) == 6 * len(ALL)
    picked = cells_for_table(pool, "some-table", 12)
    assert all(i in picked for i, d in enumerate(pool.defaults) if d)
    assert {pool.candidates[i].family for i in picked} == set(ALL)
    assert picked == cells_for_table(pool, "some-table", 12)  # every worker agrees
    assert picked != cells_for_table(pool, "another-table", 12)
    assert set(cells_for_table(pool, "some-table", 8)) <= set(picked)  # a smaller build is a subset


def test_a_killed_build_resumes_cell_by_cell(tmp_path: Path):
    tables = [(f"t{k}", lambda k=k: make_table(frame(80, 3, "binary", seed=k))) for k in range(2)]
    pool = candidate_pool(("linear",), 3, TaskInfo("binary", 2, 80, 3))
    cells = tmp_path / "cells-0.csv"
    ran: list[Cell] = []

    def killed_after_two(cell: Cell) -> None:
        ran.append(cell)
        if len(ran) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_cells(tables, pool, 3, cells, on_cell=killed_after_two)
    with cells.open("a") as fh:
        fh.write("t1,cut-short-row")  # a worker killed while writing
    build_cells(tables, pool, 3, cells, on_cell=ran.append)
    done = read_cells([cells])
    assert len(ran) == len(done) == 6 and len({(c.table, candidate_key(c.candidate)) for c in ran}) == 6
    assert all(np.isfinite(c.score) and c.seconds > 0 for c in done)
    write_cells(tmp_path / "table.csv.gz", done)
    again = read_cells([tmp_path / "table.csv.gz"])
    assert [(c.table, c.candidate, c.score) for c in again] == [(c.table, c.candidate, c.score) for c in done]
    table = PerformanceTable.from_cells(again, pool.candidates)
    assert table.ran.all() and table.scores.shape == (3, 2)


@pytest.mark.parametrize("rows, cols, kind, classes", [
    (80, 4, "binary", 2), (300, 3, "multiclass", 30), (80, 4, "regression", 0), (80, 1, "binary", 2),
    (60, 1000, "regression", 0),
])
def test_proposals_are_valid_configurations_for_every_kind_of_table(rows, cols, kind, classes, meta: MetaModel):
    table, features = _planted_table()
    pool = candidate_pool(ALL, 3, TaskInfo("binary", 2, 100, 3, meta=meta), max_steps=40)
    scores = np.random.default_rng(0).uniform(size=(len(pool.candidates), 6))
    fake = PerformanceTable(pool.candidates, [f"t{j}" for j in range(6)], scores, np.ones_like(scores))
    n_feat = len(feature_names(meta))
    store_proposer(meta, RankingProposer.train(fake, np.random.default_rng(1).normal(size=(6, n_feat)), 500,
                                               epochs=5))
    data = make_table(frame(rows, cols, kind, classes=max(classes, 2)), task=kind)
    options = FitOptions(families=("linear", "mlp", "gbdt"))
    prepared = prepare_data(data, options, meta)
    ranked = rank_proposals(data, prepared, meta, options.families, seed=0)
    assert {p.candidate.family for p in ranked} == {"linear", "mlp", "gbdt"}
    assert all(0 <= p.score <= 1 and p.seconds > 0 and p.spread >= 0 for p in ranked)
    top = ranked[0].candidate
    result = run_trial(prepared.search, FAMILIES[top.family](), top.config, seed=0)
    assert np.isfinite(result.score)


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("METAGEN_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "corpus"
    root.mkdir()
    for k in range(5):
        data = frame(120, 3, "binary", seed=k)
        if k % 2:
            data["target"] = (data["c0"] * data["c1"] > 0).astype(int)
        data.to_csv(root / f"table{k}.tsv.gz", sep="\t", index=False)
    return root


def test_meta_portfolio_builds_the_table_trains_a_proposer_and_fit_tries_its_proposals_first(
        corpus: Path, tmp_path: Path, meta: MetaModel):
    path = save_meta_model(meta, tmp_path / "meta.safetensors")
    cells, table_out = tmp_path / "cells", tmp_path / "table.csv.gz"
    common = ["meta-portfolio", "-c", str(corpus), "--meta-model", str(path), "--cells", str(cells),
              "--families", "linear,forest", "--per-family", "3", "--per-table", "4", "--max-rows", "100"]
    shard = CliRunner().invoke(app, [*common, "--shard", "1/2"])
    assert shard.exit_code == 0, shard.output
    assert (cells / "cells-1.csv").exists() and "proposer" not in load_meta_model(path).spec
    run = CliRunner().invoke(app, [*common, "--table", str(table_out)])
    assert run.exit_code == 0, run.output
    assert "proposer wins" in run.output and len(read_cells([table_out])) == 5 * 4
    trained = load_meta_model(path)
    proposer = load_proposer(trained)
    assert trained.spec["performance_table"]["tables"] == 5 and trained.spec["proposer"]["check_tables"] == 5
    assert {c.family for c in proposer.pool} == {"linear", "forest"}
    shipped = stored_table(trained, proposer.pool)  # the table itself, compact, inside the meta-model
    assert shipped.scores.shape == (len(proposer.pool), 5) and shipped.ran.sum() == 5 * 4

    data = make_table(frame(90, 3, "binary", seed=9))
    fitted = fit_table(data, FitOptions(n_trials=3, families=("linear", "forest")), meta=trained)
    proposals = fitted.provenance["proposals"]
    assert fitted.provenance["proposer"] == proposer.kind and proposals
    first = min(fitted.leaderboard, key=lambda r: r["trial"])
    assert (first["family"], first["config"]) == (proposals[0]["family"], proposals[0]["config"])
    info = TaskInfo("binary", 2, 90, 3, meta=trained)
    assert [c.family for c in first_candidates([], ("mlp", "gbdt"), info)][:2] == ["gbdt", "mlp"]  # cheap first
    # proposals and defaults take turns, and a proposal that is a default runs once
    extra = {"kind": "extra", "n_estimators": 300, "max_features": "sqrt", "min_samples_leaf": 1}
    picks = [Proposal(Candidate("forest", extra), 0.9, 1.0, 0.1, np.ones(3)),
             Proposal(Candidate("forest", {**extra, "min_samples_leaf": 5}), 0.8, 1.0, 0.1, np.ones(3)),
             Proposal(first_candidates([], ("gbdt",), info)[0], 0.7, 1.0, 0.1, np.ones(3))]
    queued = first_candidates(picks, ("gbdt", "forest"), info)
    gbdt1, forest1, gbdt2, forest2 = first_candidates([], ("gbdt", "forest"), info)
    assert queued == [picks[0].candidate, gbdt1, picks[1].candidate, forest1, gbdt2, forest2]
    forest_only = first_candidates(picks, ("forest",), info)  # one family: the picks first, then its defaults
    assert forest_only == [picks[0].candidate, picks[1].candidate, forest1, forest2]
    zero = fit_table(data, FitOptions(zero_shot=True, families=("linear", "forest")), meta=trained)
    assert zero.provenance["n_trials_complete"] == 1 and zero.provenance["zero_shot"]


def test_propose_and_zero_shot_fit_from_the_command_line(tmp_path: Path):
    csv = tmp_path / "t.csv"
    frame(120, 4, "binary").to_csv(csv, index=False)
    shown = CliRunner().invoke(app, ["propose", str(csv), "-t", "target", "--top", "5"])
    listed = CliRunner().invoke(app, ["propose", str(csv), "-t", "target", "--json", "-f", "linear,gbdt"])
    if load_proposer(load_meta_model(Path(__file__).parents[1] / "metagen/assets/meta-model.safetensors")) is None:
        assert shown.exit_code == 1 and "ships no proposer" in shown.output
        return
    assert shown.exit_code == 0, shown.output
    assert "predicted score" in shown.output
    rows = json.loads(listed.output)
    assert rows and {r["family"] for r in rows} == {"linear", "gbdt"} and rows[0]["rank"] == 1
    assert all(isinstance(r["config"], dict) and r["predicted_seconds"] > 0 for r in rows)
    out = tmp_path / "t.metagen"
    fit = CliRunner().invoke(app, ["fit", str(csv), "-t", "target", "--time-budget", "0", "-o", str(out), "-q"])
    assert fit.exit_code == 0, fit.output
    assert out.exists() and "(1 trials" in fit.output


def test_bench_propose_prints_every_strategy_on_unseen_tables(tmp_path: Path):
    suite = tmp_path / "suite"
    suite.mkdir()
    for k in range(2):
        frame(100, 3, "binary", seed=k).to_csv(suite / f"t{k}.tsv.gz", sep="\t", index=False)
    out = tmp_path / "propose.json"
    run = CliRunner().invoke(app, ["bench", "propose", "--suite", str(suite), "--max-rows", "100", "--json", str(out)])
    assert run.exit_code == 0, run.output
    result = json.loads(out.read_text())
    assert len(result["rows"]) == 2 and result["summary"]["tables"] == 2
    for row in result["rows"]:
        assert row["configs_run"] >= 5
        for key in ("ranking_top1", "ranking_top5", "portfolio_top1", "default", "random_top5"):
            assert 0.0 <= row[key] <= 1.0
        assert row["ranking_top5"] >= row["ranking_top1"]
    assert "static greedy portfolio" in run.output and "closes" in run.output
