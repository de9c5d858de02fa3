"""Several processes on one study: `metagen fit --workers N` and `metagen worker`, on a real PostgreSQL server
(started here on the loopback address) and on Optuna's journal file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from glob import glob
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from typer.testing import CliRunner

import metagen
from metagen import FitOptions
from metagen.errors import ConfigError
from metagen.search import best_trials
from metagen.storage import default_artifacts, journal_path, make_storage
from metagen_cli.app import app

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def _table(path: Path, n: int = 600, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n, 6)).round(4), columns=[f"f{i}" for i in range(6)])
    frame["y"] = (frame["f0"] + frame["f1"] * frame["f2"] > 0).astype(int)
    frame.to_csv(path, index=False)
    return path


def _start(*args: object) -> subprocess.Popen:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "metagen_cli.app", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    return stdout


def _trials(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=make_storage(storage)).get_trials(deepcopy=False)


def _worker_trials(storage: str, study: str, worker: subprocess.Popen, state: str) -> list[int]:
    """The numbers of the trials in ``state`` that ``worker`` runs ([] while the study does not exist yet)."""
    with contextlib.suppress(KeyError):
        return [t.number for t in _trials(storage, study) if t.state == optuna.trial.TrialState[state]
                and t.user_attrs.get("worker", "").endswith(f":{worker.pid}")]
    return []


# --- a PostgreSQL server of the tests' own ------------------------------------------------------------------


def _postgres_bin() -> Path | None:
    for pg_ctl in [shutil.which("pg_ctl"), *sorted(glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)]:
        if pg_ctl:
            return Path(pg_ctl).resolve().parent
    return None


def _without_postgres(reason: str) -> None:
    """Skip, saying why; where PostgreSQL must be there (``.ci/run`` sets METAGEN_REQUIRE_POSTGRES), fail instead,
    so a CI run cannot pass these tests by skipping them."""
    if os.environ.get("METAGEN_REQUIRE_POSTGRES"):
        pytest.fail(f"METAGEN_REQUIRE_POSTGRES is set but {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1 (trust auth, a temporary data folder), stopped at the end.
    PostgreSQL refuses to run as root, so as root it runs as the ``postgres`` (or ``nobody``) user."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _without_postgres("the PostgreSQL driver psycopg is not installed (pip install -e '.[test]')")
    bindir = _postgres_bin()
    if bindir is None:
        _without_postgres("PostgreSQL is not installed (Debian: apt-get install postgresql, as .ci/run does)")
    run_as: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="metagen-pg-"))
    if os.geteuid() == 0:
        import pwd

        users = [u for u in ("postgres", "nobody") if u in {p.pw_name for p in pwd.getpwall()}]
        if not users or shutil.which("runuser") is None:
            _without_postgres("PostgreSQL will not run as root, and there is no postgres or nobody user to run it as")
        shutil.chown(folder, users[0])
        run_as = ["runuser", "-u", users[0], "--"]
    data, port = folder / "data", _free_port()
    try:
        subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8"], check=True, capture_output=True, cwd=folder)
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w",
                        "-o", f"-h 127.0.0.1 -p {port} -k {folder}", "start"], check=True, capture_output=True,
                       cwd=folder)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        _without_postgres(f"cannot start a PostgreSQL server here: "
                          f"{exc.stderr.decode(errors='replace').strip()[-300:]}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, cwd=folder)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["journal", "postgresql"])
def storage(request, tmp_path) -> str:
    if request.param == "journal":
        return f"journal:///{tmp_path / 'study.log'}"
    return request.getfixturevalue("postgres_url")


# --- the tests ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_workers_finish_one_study_and_the_model_blends_both(tmp_path, storage):
    data, model = _table(tmp_path / "d.csv"), tmp_path / "m.metagen"
    study = f"two-{time.time_ns()}"
    stdout = _finish(_start("fit", data, "-o", model, "--storage", storage, "--study", study, "--workers", 2,
                            "--time-budget", 20, "--families", "gbdt,linear", "--artifacts", tmp_path / "art", "-q"))
    assert study in stdout.replace("\n", "")
    trials = _trials(storage, study)
    assert not [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    by_worker = Counter(t.user_attrs["worker"] for t in complete)
    assert len(by_worker) == 2, by_worker  # both processes completed trials
    queued = [json.dumps(t.system_attrs["fixed_params"], sort_keys=True) for t in trials
              if t.state in FINISHED and "fixed_params" in t.system_attrs]
    assert len(queued) == len(set(queued))  # no enqueued candidate was run twice
    provenance = metagen.load(model).fitted.provenance
    coordinator = optuna.load_study(study_name=study, storage=make_storage(storage)).user_attrs["metagen.fit"][
        "coordinator"]
    wanted = best_trials({t.number: (t.user_attrs["family"], t.value) for t in complete})
    from_worker = {t.number for t in complete if t.user_attrs["worker"] != coordinator} & wanted
    # every kept trial of the other worker reached the coordinator (one finishing after the export may not)
    assert 1 <= provenance["trials_from_artifacts"] <= len(from_worker)


@pytest.mark.slow
def test_a_killed_worker_trial_is_failed_by_its_heartbeat_and_run_again(tmp_path, postgres_url):
    data, model, study = _table(tmp_path / "d.csv", 2000), tmp_path / "m.metagen", f"kill-{time.time_ns()}"
    # Boosting trials of about a second each: long enough to be caught running, and the coordinator still starts
    # trials (and so looks for stale ones) well after the killed trial's grace period of 4 heartbeats.
    fit = _start("fit", data, "-o", model, "--storage", postgres_url, "--study", study, "--n-trials", 20,
                 "--heartbeat", 1, "--families", "gbdt", "--artifacts", tmp_path / "art", "-q")
    end, victim = time.monotonic() + 120, None
    while victim is None:  # a worker killed between two trials holds none: start another
        worker = _start("worker", data, "--storage", postgres_url, "--study", study)
        while not _worker_trials(postgres_url, study, worker, "RUNNING"):
            assert time.monotonic() < end and worker.poll() is None and fit.poll() is None
            time.sleep(0.2)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        # read after the kill: a dead worker's running trial can no longer finish, only its heartbeat can fail it
        victim = next(iter(_worker_trials(postgres_url, study, worker, "RUNNING")), None)
    _finish(fit)
    trials = {t.number: t for t in _trials(postgres_url, study)}
    assert trials[victim].state == optuna.trial.TrialState.FAIL
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == victim]
    assert len(retries) == 1 and retries[0].state in FINISHED, [(t.number, t.state) for t in retries]
    assert retries[0].params == trials[victim].params
    assert sum(t.state in FINISHED for t in trials.values()) >= 20
    assert not [t for t in trials.values() if t.state == optuna.trial.TrialState.RUNNING]
    assert model.exists()


@pytest.mark.slow
def test_a_resumed_coordinator_blends_trials_it_did_not_run(tmp_path):
    """Another process's trials reach the ensemble through the artefact store: a resumed fit that runs no trial
    itself exports the first process's model, member for member."""
    data, log = _table(tmp_path / "d.csv"), tmp_path / "study.log"
    storage, study = f"journal:///{log}", "resume"
    args = ["fit", data, "--storage", storage, "--study", study, "--n-trials", 6, "--families", "gbdt,linear", "-q"]
    _finish(_start(*args, "-o", tmp_path / "m1.metagen"))
    _finish(_start(*args, "-o", tmp_path / "m2.metagen", "--resume"))
    first, second = (metagen.load(tmp_path / f"m{i}.metagen") for i in (1, 2))
    provenance = second.fitted.provenance
    assert provenance["members_from_artifacts"] == provenance["ensemble_size"] == len(first.fitted.members)
    rows = pd.read_csv(data).drop(columns="y")
    np.testing.assert_allclose(second.predict_proba(rows), first.predict_proba(rows), rtol=0, atol=1e-12)
    assert (tmp_path / "study.artifacts").is_dir()  # the default folder, beside the journal file

    other = _table(tmp_path / "other.csv", seed=1)
    result = CliRunner().invoke(app, ["worker", str(other), "--storage", storage, "--study", study])
    assert result.exit_code == 1 and "is not the table study 'resume' was started with" in result.output
    result = CliRunner().invoke(app, ["worker", str(data), "--storage", storage, "--study", "nope", "--wait", "0"])
    assert result.exit_code == 1 and "No study 'nope'" in result.output


def test_workers_need_a_storage_every_process_opens(tmp_path):
    with pytest.raises(ConfigError, match="needs a storage"):
        FitOptions(shared=True)
    with pytest.raises(ConfigError, match="artifacts"):
        FitOptions(shared=True, storage="postgresql://db.example/metagen")
    result = CliRunner().invoke(app, ["fit", "-", "--workers", "2"], input="a,y\n1,0\n2,1\n")
    assert result.exit_code == 1 and "--workers needs a data file" in result.output


def test_storage_urls_name_their_files(tmp_path):
    assert journal_path("journal:///runs/s.log") == Path("runs/s.log")
    assert journal_path(f"journal:///{tmp_path}/s.log") == tmp_path / "s.log"
    assert journal_path("runs/s.log") == Path("runs/s.log")
    assert journal_path("sqlite:///s.db") is None and journal_path("postgresql://h/db") is None
    assert default_artifacts("sqlite:///runs/m.optuna.db") == Path("runs/m.optuna.artifacts")
    assert default_artifacts("journal:///s.log") == Path("s.artifacts")
    assert default_artifacts("postgresql://h/db") is None
    study = optuna.create_study(storage=make_storage(f"journal:///{tmp_path}/s.log"), study_name="s")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    assert len(optuna.load_study(study_name="s", storage=make_storage(str(tmp_path / "s.log"))).trials) == 3


def test_bench_storage_prints_every_storage():
    result = CliRunner().invoke(app, ["bench", "storage", "--trials", "3"])
    assert result.exit_code == 0, result.output
    for name in ("memory", "sqlite", "journal", "ms per trial"):
        assert name in result.output
