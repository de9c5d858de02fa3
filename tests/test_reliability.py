"""The real `metagen fit` process under deadlines, Ctrl-C, SIGKILL + --resume, shared storage, and reruns."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

# Python, torch, optuna and scikit-learn imports before `fit` starts its clock (5-7 s on a busy 2-core box).
STARTUP_ALLOWANCE = 10.0


def _table(path: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n, 6)).round(4), columns=[f"f{i}" for i in range(6)])
    frame["y"] = (frame["f0"] + frame["f1"] * frame["f2"] > 0).astype(int)
    frame.to_csv(path, index=False)
    return path


def _start(*args: object, threads: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "COLUMNS": "200"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    # A shell started in the background ignores SIGINT, and children would inherit that.
    return subprocess.Popen([sys.executable, "-m", "metagen_cli.app", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _finished_trials(db: Path) -> list[tuple[int, str]]:
    """Read the study file directly (never creating it): (number, state) of every finished trial."""
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
            return con.execute("SELECT number, state FROM trials WHERE state IN ('COMPLETE', 'PRUNED')").fetchall()
    except sqlite3.OperationalError:  # the child has not created the tables yet
        return []


def _wait_for_trials(proc: subprocess.Popen, db: Path, n: int, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while sum(s == "COMPLETE" for _, s in _finished_trials(db)) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "no trials finished"
        time.sleep(0.3)


def test_ctrl_c_stops_within_seconds_and_writes_the_best_model(tmp_path):
    data, model = _table(tmp_path / "d.csv", 2000), tmp_path / "m.metagen"
    proc = _start("fit", data, "-o", model, "--time-budget", "300", "-q")
    _wait_for_trials(proc, tmp_path / "m.optuna.db", 2)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    stopped = time.monotonic() - sent
    assert proc.returncode == 130, stderr
    assert stopped < 10, stopped
    assert "interrupted: wrote best model so far (" in stderr and "Traceback" not in stderr
    import metagen

    provenance = metagen.load(model).fitted.provenance
    assert provenance["interrupted"] and provenance["n_trials_complete"] >= 2


def test_killed_fit_resumes_without_repeating_finished_trials(tmp_path):
    data, model, db = _table(tmp_path / "d.csv", 2000), tmp_path / "m.metagen", tmp_path / "m.optuna.db"
    args = ["fit", data, "-o", model, "--n-trials", "10", "--max-steps", "150", "-q"]
    proc = _start(*args)
    _wait_for_trials(proc, db, 3)
    proc.kill()
    proc.wait()
    storage = f"sqlite:///{db}"
    (summary,) = optuna.get_all_study_summaries(storage)
    before = {t.number: (t.state, t.value, t.params)
              for t in optuna.load_study(study_name=summary.study_name, storage=storage).trials
              if t.state.is_finished()}
    assert not model.exists()

    proc = _start(*args, "--resume")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    finished = [t for t in trials if t.state.is_finished()]
    assert len(finished) == 10  # the earlier ones count: none is run again
    assert {t.number: (t.state, t.value, t.params) for t in finished if t.number in before} == before
    params = [json.dumps(t.params, sort_keys=True) for t in finished]
    assert len(set(params)) == len(params)  # the resumed sampler does not redraw earlier configurations
    assert model.exists() and summary.study_name in stdout.replace("\n", "")


@pytest.mark.parametrize("rows", [2_000, 200_000])
def test_time_budget_holds(tmp_path, rows):
    data, budget = _table(tmp_path / "d.csv", rows), 15.0
    start = time.monotonic()
    proc = _start("fit", data, "-o", tmp_path / "m.metagen", "--time-budget", budget, "-q")
    _, stderr = proc.communicate(timeout=120)
    wall = time.monotonic() - start
    assert proc.returncode == 0, stderr
    print(f"{rows} rows, budget {budget}s: wall {wall:.1f}s")
    assert wall <= 1.1 * budget + STARTUP_ALLOWANCE


def _weights_sha(model: Path) -> str:
    with zipfile.ZipFile(model) as zf:
        return json.loads(zf.read("spec.json"))["weights"]["sha256"]


def test_same_seed_and_trials_give_bit_identical_weights(tmp_path):
    data = _table(tmp_path / "d.csv", 1500)
    runs = []
    for i, budget in enumerate(["1", "300"]):  # the clock must not change which trials run
        model = tmp_path / f"m{i}.metagen"
        proc = _start("fit", data, "-o", model, "--seed", "7", "--n-trials", "4", "--max-steps", "80",
                      "--time-budget", budget, "-q", threads=1)
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        runs.append(_weights_sha(model))
    assert runs[0] == runs[1]


def test_two_fits_share_one_sqlite_storage(tmp_path):
    data, db = _table(tmp_path / "d.csv", 1500), tmp_path / "shared.db"
    storage = f"sqlite:///{db}"
    sqlite3.connect(db).close()
    procs = [_start("fit", data, "-o", tmp_path / f"m{i}.metagen", "--storage", storage, "--n-trials", "6",
                    "--max-steps", "60", "-q") for i in range(2)]
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    summaries = optuna.get_all_study_summaries(storage)
    assert sorted(s.n_trials for s in summaries) == [6, 6]
    for s in summaries:
        states = [t.state for t in optuna.load_study(study_name=s.study_name, storage=storage).trials]
        assert all(state.is_finished() for state in states)
