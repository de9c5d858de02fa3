"""The peers benchmark harness on two tiny PMLB-format tables: runs, failures, resume, summary."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metagen.bench import METHODS, BenchConfig, Method, read_records, run_benchmark, summarise, write_json
from metagen.bench.harness import anytime_plot, suite_tables

FAST = [m for m in METHODS if m.name in ("hgb", "linear")]


# Methods only these tests register: the run's process imports them from this module by name.
def crashing(task: str, budget: float | None, seed: int, threads: int):  # noqa: ANN201
    raise RuntimeError("this method always crashes")


class _Sleeper:
    def fit(self, X, y) -> "_Sleeper":  # noqa: ANN001
        time.sleep(600)
        return self


def sleeping(task: str, budget: float | None, seed: int, threads: int) -> _Sleeper:
    return _Sleeper()


CRASH = Method("crash", f"{__name__}:crashing")
SLEEP = Method("sleep", f"{__name__}:sleeping", budgeted=True)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny tables, binary and regression, in PMLB format, with the table cache beside them."""
    root = tmp_path_factory.mktemp("suite")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3))
    frames = {
        "tiny_binary": pd.DataFrame(X, columns=["a", "b", "c"]).assign(
            colour=rng.choice(["red", "blue"], 120), target=(X[:, 0] + X[:, 1] > 0).astype(int)),
        "tiny_regression": pd.DataFrame(X, columns=["a", "b", "c"]).assign(target=2 * X[:, 0] - X[:, 2]),
    }
    for name, frame in frames.items():
        frame.to_csv(root / f"{name}.tsv.gz", sep="\t", index=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAGEN_CACHE", str(root / "cache"))
        yield root


def test_runs_score_every_method_on_every_table(suite: Path, tmp_path: Path) -> None:
    records = run_benchmark(BenchConfig(str(suite)), FAST, [5.0], [0], tmp_path / "runs.csv")
    assert sorted((r.dataset, r.method) for r in records) == [
        ("tiny_binary", "hgb"), ("tiny_binary", "linear"), ("tiny_regression", "hgb"), ("tiny_regression", "linear")]
    for r in records:
        assert r.status == "ok", r.message
        assert r.n_train == 90 and r.n_test == 30
        assert r.fit_s >= 0 and r.peak_mem_mb > 0
        if r.task == "binary":
            assert r.score == r.roc_auc and 0.5 < r.roc_auc <= 1 and not math.isnan(r.log_loss)
        else:
            assert r.score == r.r2 and r.r2 > 0.5 and r.rmse > 0

    rows = summarise(records)
    assert {row["method"] for row in rows} == {"hgb", "linear"}
    assert all(0 <= row["norm_score"] <= 1 and row["n_ok"] == 2 for row in rows)
    assert sum(row["wins"] for row in rows) >= 2  # one best method per table at least
    write_json(tmp_path / "runs.json", [vars(r) for r in records])
    assert len(json.loads((tmp_path / "runs.json").read_text())) == 4
    anytime_plot(rows, tmp_path / "anytime.png", "tiny")
    assert (tmp_path / "anytime.png").stat().st_size > 0


def test_a_crash_and_an_overrun_are_recorded_and_the_run_goes_on(suite: Path, tmp_path: Path) -> None:
    config = BenchConfig(str(suite), timeout_slack_s=2.0)
    records = run_benchmark(config, [CRASH, SLEEP, FAST[0]], [0.5], [0], tmp_path / "runs.csv")
    by = {(r.dataset, r.method): r for r in records}
    assert len(by) == 6
    crash, sleep = by["tiny_binary", "crash"], by["tiny_binary", "sleep@0.5"]
    assert crash.status == "error" and "always crashes" in crash.message
    assert sleep.status == "timeout" and sleep.wall_s < 30
    assert by["tiny_regression", "hgb"].status == "ok"
    rows = {row["method"]: row for row in summarise(records)}
    assert rows["crash"]["n_failed"] == 2 and rows["crash"]["norm_score"] == 0.0
    assert rows["hgb"]["norm_score"] == 1.0


def test_resume_skips_finished_runs(suite: Path, tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    run_benchmark(BenchConfig(str(suite)), FAST[:1], [5.0], [0], path)
    first = path.read_text()
    ran: list[str] = []
    records = run_benchmark(BenchConfig(str(suite)), FAST, [5.0], [0], path, lambda r, i, n: ran.append(r.method))
    assert ran == ["linear", "linear"]
    assert path.read_text().startswith(first) and len(read_records(path)) == len(records) == 4
    only = run_benchmark(BenchConfig(str(suite)), FAST[1:], [5.0], [0], path)  # nothing to run: a summary of these
    assert {r.method for r in only} == {"linear"} and len(only) == 2 and len(read_records(path)) == 4


def test_suites_resolve_folders_splits_and_builtins(suite: Path) -> None:
    assert [r.name for r in suite_tables(str(suite))] == ["tiny_binary", "tiny_regression"]
    assert {r.name for r in suite_tables("sklearn")} >= {"iris", "diabetes"}
    assert len(suite_tables("synthetic")) > 0


def test_cli_writes_records_summary_and_plot(suite: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from metagen_cli.app import app

    out = tmp_path / "out"
    args = ["bench", "peers", "--suite", str(suite), "--methods", "hgb,linear", "--budgets", "5", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wins" in result.output and "linear" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [m["method"] for m in summary["methods"]] and summary["budgets"] == [5.0]
    assert len(json.loads((out / "runs.json").read_text())) == 4 and (out / "anytime.png").exists()
    assert CliRunner().invoke(app, ["bench", "peers", "--suite", str(suite), "--methods", "nope"]).exit_code == 2


def test_compare_normalises_two_folders_runs_together(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from metagen.bench import RunRecord, append_record
    from metagen_cli.app import app

    for folder, scores in (("a", (0.7, 0.6)), ("b", (0.9, 0.8))):  # b's runs are the better ones
        for table, score in zip(("t1", "t2"), scores):
            append_record(tmp_path / folder / "runs.csv",
                          RunRecord(table, "binary", "metagen@10", 10.0, 0, "ok", score=score, fit_s=9.0))
    result = CliRunner().invoke(app, ["bench", "compare", f"before={tmp_path / 'a'}", f"after={tmp_path / 'b'}"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    cells = [[c.strip() for c in line.split("│")] for line in result.output.splitlines() if ":metagen@10" in line]
    # mean normalised score and wins, the two folders' runs normalised against each other on each table
    assert {row[1]: (row[4], row[6]) for row in cells} == {"before:metagen@10": ("0.000", "0"),
                                                          "after:metagen@10": ("1.000", "2")}
    result = CliRunner().invoke(app, ["bench", "compare", f"before={tmp_path / 'a'}", f"after={tmp_path / 'b'}",
                                      "--against", "before:metagen@10"], env={"COLUMNS": "200"})
    counts = [[c.strip() for c in line.split("│")] for line in result.output.splitlines() if "after:metagen" in line]
    assert result.exit_code == 0 and counts[-1][1:-1] == ["after:metagen@10", "before:metagen@10", "2", "0", "0"]
    unknown = CliRunner().invoke(app, ["bench", "compare", str(tmp_path / "a"), "--against", "nope@10"])
    assert unknown.exit_code == 1 and "No finished runs of 'nope@10'" in unknown.output
    missing = CliRunner().invoke(app, ["bench", "compare", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "has no runs.csv" in missing.output
