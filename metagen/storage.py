"""Where a study and its trials' results live, so that several processes can share one search.

The engines are Optuna's own: an RDB storage (SQLite, PostgreSQL, MySQL) or a journal file
for the study, and a file-system artefact store for what a trial trained. A storage URL is
one of

- ``sqlite:///study.db`` (relative path; ``sqlite:////abs/study.db`` absolute): one file,
  several processes on one machine (they wait up to ``SQLITE_TIMEOUT`` for each other's locks);
- ``postgresql://user@host:port/db`` or ``mysql://...``: a database server, many machines;
- ``journal:///study.log`` (relative; ``journal:////abs/study.log`` absolute), or any path
  ending in ``.log``: Optuna's journal file, several processes on one machine, no server.

On an RDB storage a running trial records a heartbeat; a trial silent for ``GRACE_BEATS``
heartbeats (its process died) is failed by whichever process looks next and queued again
(Optuna's ``RetryHeartbeatStaleTrialCallback``). Optuna's ``JournalStorage`` has no heartbeat
(checked in Optuna 5.0: it does not implement ``BaseHeartbeat``), so there a dead worker's trial
stays RUNNING and is simply left out.

A trial that another process may need for the ensemble (its out-of-fold predictions and its
trained parts) is uploaded as one safetensors file to the artefact store, linked to the trial
by Optuna's artefact metadata. Nothing in it is executed when it is read back.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import optuna
from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta, upload_artifact
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, ProgrammingError

from metagen.errors import StorageError
from metagen.model_file import json_default
from metagen.serving import PART_KINDS, Part

if TYPE_CHECKING:
    from metagen.search import TrialResult

log = logging.getLogger(__name__)

# Seconds a process waits for another one's lock on a shared SQLite study file.
SQLITE_TIMEOUT = 120.0
STORAGE_HINT = ("For many processes on one study, use postgresql://... (pip install 'metagen[postgres]'), "
                "or journal:///study.log on one machine.")
JOURNAL_PREFIX = "journal:///"
# A running trial whose last heartbeat is this many intervals old belongs to a dead process.
GRACE_BEATS = 4
# Times a dead worker's trial is queued again before it is given up.
MAX_RETRIES = 2
ARTIFACT_HEADER = "metagen"


def journal_path(url: str) -> Path | None:
    """The journal file a URL names, or None when it names another storage."""
    if url.startswith(JOURNAL_PREFIX):
        return Path(url[len(JOURNAL_PREFIX):])
    if "://" not in url and url.endswith(".log"):
        return Path(url)
    return None


def make_storage(url: str | None, heartbeat: int | None = None) -> BaseStorage | None:
    """The Optuna storage a URL names (None: in memory); ``heartbeat`` seconds turn on an RDB storage's heartbeat."""
    if url is None:
        return None
    journal = journal_path(url)
    if journal is not None:
        journal.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(journal)))
    engine = {"connect_args": {"timeout": SQLITE_TIMEOUT}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        beat = {} if heartbeat is None else {
            "heartbeat_interval": heartbeat, "grace_period": GRACE_BEATS * heartbeat,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES),
        }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable since 2.9
            return _rdb_storage(url, engine, beat)
    except ImportError as exc:
        raise StorageError(f"No database driver for {url.split(':')[0]} storage ({exc.__cause__ or exc}).",
                           "pip install 'metagen[postgres]' for PostgreSQL (psycopg); with SQLAlchemy < 2.1 write "
                           "the URL as postgresql+psycopg://...") from exc
    except ArgumentError as exc:
        raise StorageError(f"{url!r} is not a storage URL.",
                           "Use sqlite:///study.db, journal:///study.log or postgresql://user@host/db.") from exc


def _rdb_storage(url: str, engine: dict, beat: dict, attempts: int = 5) -> RDBStorage:
    """Processes that create the schema of a new database at once collide (a duplicate version row, a table or
    type that already exists); a moment later the slower one finds the schema made."""
    for attempt in range(attempts - 1):
        try:
            return RDBStorage(url, engine_kwargs=engine, **beat)
        except (IntegrityError, OperationalError, ProgrammingError):
            time.sleep(0.2 * (attempt + 1))
    try:
        return RDBStorage(url, engine_kwargs=engine, **beat)
    except OperationalError as exc:
        raise StorageError(f"Cannot open the study storage: {exc.orig}.", STORAGE_HINT) from exc


def default_artifacts(url: str) -> Path | None:
    """The artefact folder beside a study file (``study.db`` -> ``study.artifacts``); None for a database server."""
    file = journal_path(url)
    if file is None and url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        file = Path(url[len("sqlite:///"):])
    return None if file is None else file.with_suffix(".artifacts")


def artifact_store(folder: str | Path) -> FileSystemArtifactStore:
    """Optuna's artefact store on a folder every process of the study sees (a shared file system)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))


def upload_result(trial: optuna.Trial, result: TrialResult, store: FileSystemArtifactStore) -> None:
    """Attach a scored trial's predictions and trained parts to it, as one safetensors file."""
    tensors = {"predictions": np.ascontiguousarray(result.predictions)}
    parts = []
    for j, part in enumerate(result.parts):
        meta, arrays = part.to_arrays()
        parts.append({"kind": part.kind, "meta": meta})
        tensors.update({f"p{j}/{k}": np.ascontiguousarray(v) for k, v in arrays.items()})
    header = {"family": result.family, "config": result.config, "score": result.score, "seconds": result.seconds,
              "needs_refit": result.needs_refit, "details": result.details, "parts": parts}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"trial-{trial.number}.safetensors"
        save_file(tensors, str(path), metadata={ARTIFACT_HEADER: json.dumps(header, default=json_default)})
        try:
            upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
        except OSError as exc:
            raise StorageError(f"Cannot write trial {trial.number}'s artefact: {exc}.",
                               "Pass --artifacts DIR, a folder every worker can write.") from exc


def download_results(study: optuna.Study, store: FileSystemArtifactStore, numbers: set[int]) -> dict[int, TrialResult]:
    """The uploaded results of the study's trials ``numbers`` (TrialResults by number); a trial without a readable
    artefact is left out, with a warning."""
    from metagen.search import TrialResult  # search imports this module for its storages

    found = {}
    for trial in study.get_trials(deepcopy=False):
        if trial.number not in numbers:
            continue
        metas = get_all_artifact_meta(trial, storage=study._storage)  # Optuna's documented way to list them
        if not metas:
            continue
        with tempfile.TemporaryDirectory() as folder:
            path = str(Path(folder) / metas[-1].filename)
            try:
                download_artifact(artifact_store=store, file_path=path, artifact_id=metas[-1].artifact_id)
                header, tensors = _read_artifact(path)
                parts: list[Part] = [
                    PART_KINDS[p["kind"]].from_arrays(p["meta"], {k.split("/", 1)[1]: v for k, v in tensors.items()
                                                                  if k.startswith(f"p{j}/")})
                    for j, p in enumerate(header["parts"])]
            except (OSError, KeyError, ValueError, SafetensorError, optuna.artifacts.exceptions.ArtifactNotFound) as exc:
                log.warning("trial %d: its artefact cannot be read (%s); it is left out of the ensemble", trial.number, exc)
                continue
        found[trial.number] = TrialResult(header["family"], header["config"], float(header["score"]),
                                          tensors["predictions"], parts, float(header["seconds"]),
                                          bool(header["needs_refit"]), trial.number, header["details"])
    return found


def _read_artifact(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    with safe_open(path, framework="numpy") as fh:
        header = json.loads(fh.metadata()[ARTIFACT_HEADER])
        return header, {k: fh.get_tensor(k) for k in fh.keys()}


def wait_for_running(study: optuna.Study, seconds: float, poll: float = 0.5) -> None:
    """Wait up to ``seconds`` for the trials other processes are running to finish; a trial whose process died
    is failed by its stale heartbeat meanwhile (RDB storages)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            return
        time.sleep(poll)
