"""A worker: runs trials of a study that ``metagen fit`` coordinates, from its own copy of the table.

The coordinator publishes in the study (:data:`metagen.fit.CARD`) the target, the options that shape
a trial, a fingerprint of the prepared data, the deadline, the heartbeat and the artefact folder.
A worker waits for that card, reads its table with the same target, prepares it as the coordinator
did and checks the fingerprint (another file, or a metagen that prepares it differently, is a typed
error), then runs the same search (:func:`metagen.search.run_search`) on the same study until the
deadline or the study's trial count, uploading the trials it keeps for the coordinator's ensemble.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna

from metagen.errors import DataError, StorageError
from metagen.fit import CARD, FitOptions, prepare_data
from metagen.meta_model import shipped_meta_model
from metagen.search import Progress, open_study, quiet_optuna, run_search, worker_id
from metagen.storage import artifact_store, make_storage, upload_result
from metagen.table import read_table

# Seconds a worker waits for the coordinator to create the study and publish its card.
WAIT_FOR_STUDY = 120.0
POLL_SECONDS = 0.5


@dataclass
class WorkerResult:
    study_name: str
    n_complete: int
    """Trials this process completed."""
    best_score: float
    """The study's best score when the worker stopped (every process's trials)."""


def read_card(storage: str, study_name: str, wait: float = WAIT_FOR_STUDY) -> dict:
    """The coordinator's card, waiting up to ``wait`` seconds for the study and the card to appear."""
    backend = make_storage(storage)
    end = time.monotonic() + wait
    with quiet_optuna():
        while True:
            try:
                card = optuna.load_study(study_name=study_name, storage=backend).user_attrs.get(CARD)
            except KeyError:  # no such study yet
                card = None
            if card is not None:
                return card
            if time.monotonic() > end:
                raise StorageError(f"No study {study_name!r} started by `metagen fit` in {storage} "
                                   f"(waited {wait:g}s).",
                                   "Start `metagen fit DATA --storage URL --study NAME` first, with the same NAME.")
            time.sleep(POLL_SECONDS)


def run_worker(data_path: str | Path, storage: str, study_name: str, *, artifacts: str | None = None,
               wait: float = WAIT_FOR_STUDY, on_progress: Callable[[Progress], None] | None = None) -> WorkerResult:
    """Run the study's trials until its deadline or trial count; ``artifacts`` overrides the coordinator's folder
    (the same shared folder, mounted elsewhere on this machine)."""
    card = read_card(storage, study_name, wait)
    table = read_table(data_path, target=card["target"], task=card["task"])
    left = math.inf if card["deadline"] is None else card["deadline"] - time.time()
    options = FitOptions(time_budget=max(left, 1.0), storage=storage, study_name=study_name, resume=True, shared=True,
                         artifacts=artifacts or card["artifacts"], heartbeat=card["heartbeat"], **card["options"])
    data = prepare_data(table, options, shipped_meta_model() if options.use_meta else None).search
    if data.fingerprint() != card["fingerprint"]:
        raise DataError(f"{data_path} is not the table study {study_name!r} was started with, or this metagen "
                        "prepares it differently.",
                        "Give every worker the same data file as `metagen fit`, and the same metagen version.")
    with quiet_optuna():
        # The sampler's seed differs per process, so workers do not draw the same configurations;
        # a trial's training seed is the study's seed plus its number, whoever runs it.
        study = open_study(storage, study_name, options.seed + os.getpid(), resume=True, heartbeat=options.heartbeat)
        if left <= 0:
            return WorkerResult(study_name, 0, _best(study))
        store = artifact_store(options.artifacts)
        run_search(data, study, options.families, time_budget=left, n_trials=options.n_trials, seed=options.seed,
                   max_steps=options.max_steps, on_progress=on_progress,
                   on_kept=lambda trial, result: upload_result(trial, result, store))
        me = worker_id()
        mine = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if t.user_attrs.get("worker") == me]
        return WorkerResult(study_name, len(mine), _best(study))


def _best(study: optuna.Study) -> float:
    values = [t.value for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    return max(values, default=float("nan"))
