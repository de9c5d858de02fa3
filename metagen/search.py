"""Stage 4 of ``fit``: an Optuna study over network configurations under a hard deadline.

Known-good configurations (the default, later the meta-model's proposals) are
enqueued first; TPE takes over from there and a median pruner stops trials whose
intermediate validation scores trail. Studies live in real Optuna storage so a
fit can be inspected and resumed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import optuna

from sqlalchemy.exc import OperationalError

from metagen.errors import BudgetError, ConfigError, StorageError
from metagen.config import NetConfig, suggest_config, trial_params
from metagen.meta_model import MetaModel, initial_network, member_config
from metagen.train import TrainResult, train_network

log = logging.getLogger(__name__)

# Trained models kept in memory for the final ensemble.
ENSEMBLE_POOL = 8
# Seconds a process waits for another one's lock on a shared SQLite study file.
SQLITE_TIMEOUT = 120.0
STORAGE_HINT = "For many processes on one study, use an RDB URL (postgresql://... or mysql://...) as --storage."


@dataclass
class SearchData:
    """Training and validation rows, preprocessed once per numeric scaling."""

    X_tr: dict[str, np.ndarray]
    y_tr: np.ndarray
    X_va: dict[str, np.ndarray]
    y_va: np.ndarray
    task: str
    n_out: int


@dataclass
class Progress:
    n_done: int
    best_score: float
    elapsed: float
    budget: float


@dataclass
class SearchResult:
    best_config: NetConfig
    best_score: float
    best_trial: int
    models: dict[int, TrainResult] = field(default_factory=dict)
    """The best trials' trained models by trial number (those that ran in this process), for the ensemble."""
    leaderboard: list[dict] = field(default_factory=list)
    configs: dict[int, NetConfig] = field(default_factory=dict)
    """Every complete trial's configuration by trial number."""
    study_name: str = ""
    n_complete: int = 0
    n_pruned: int = 0
    interrupted: bool = False
    """Ctrl-C stopped the search; the result is the best trial finished before it."""


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """metagen shows its own progress; Optuna's per-trial log lines would drown it."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


def _sampler(seed: int) -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=8)


def open_study(storage: str | None, study_name: str, seed: int, resume: bool) -> optuna.Study:
    """Create the study (or load it with ``resume``) in any Optuna storage URL, or in memory.

    SQLite waits up to ``SQLITE_TIMEOUT`` seconds for a lock, so several fits can share one
    file; a resumed study's sampler is seeded past the trials it has, so it does not draw them again.
    """
    pruner = optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=50)
    try:
        if storage is not None and storage.startswith("sqlite"):
            storage = optuna.storages.RDBStorage(
                storage, engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT}}
            )
        study = optuna.create_study(
            storage=storage, study_name=study_name, direction="maximize", sampler=_sampler(seed),
            pruner=pruner, load_if_exists=resume,
        )
    except OperationalError as exc:
        raise StorageError(f"Cannot open the study storage: {exc.orig}.", STORAGE_HINT) from exc
    if study.trials:
        study.sampler = _sampler(seed + len(study.trials))
    return study


def train_config(
    data: SearchData,
    config: NetConfig,
    *,
    seed: int,
    meta: MetaModel | None = None,
    deadline: float | None = None,
    on_eval: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """One trial's training: from a meta-model member's learned start, or from a random one."""
    init = None
    if config.init != "random":
        if meta is None or config.init not in meta.members:
            raise ConfigError(f"Configuration starts from meta-model member {config.init!r}, which is not loaded.",
                              "Fit with the meta-model that made the study, or start a new study.")
        arch = meta.members[config.init][0]
        init = initial_network(meta, config.init, data.X_tr[config.scaling], data.y_tr, data.task, data.n_out,
                               config, steps=arch.inner_steps, seed=seed)
    return train_network(
        data.X_tr[config.scaling], data.y_tr, data.X_va[config.scaling], data.y_va, data.task, data.n_out,
        config, seed=seed, deadline=deadline, on_eval=on_eval, init=init,
    )


def run_search(
    data: SearchData,
    study: optuna.Study,
    *,
    time_budget: float,
    n_trials: int | None = None,
    seed: int = 0,
    enqueue: list[NetConfig] = (),
    max_steps: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    meta: MetaModel | None = None,
) -> SearchResult:
    """Run trials until the deadline, or exactly ``n_trials`` (then the clock does not cut them).

    With a meta-model, the enqueued member configurations adapt that member's learned
    start; every other trial searches the random-start space, so the learned starts cost
    a few trials and the search keeps its full reach.

    Ctrl-C ends the search early; the result then comes from the trials finished before it.
    """
    start = time.monotonic()
    deadline = None if n_trials is not None else start + time_budget
    models: dict[int, TrainResult] = {}
    interrupted = False
    members = {name: member_config(arch) for name, (arch, _) in meta.members.items()} if meta else {}
    done = [t for t in study.trials if t.state.is_finished()]
    if not done:
        for config in enqueue:
            if config.init == "random" or config.init in members:
                study.enqueue_trial(trial_params(config, max_steps), user_attrs={"start": config.init},
                                    skip_if_exists=True)

    def run_trial(trial: optuna.Trial) -> float:
        config = suggest_config(trial, max_steps, members.get(trial.user_attrs.get("start", "random")))
        trial.set_user_attr("config", config.to_json())

        def report(step: int, score: float) -> None:
            trial.report(score, step)
            if trial.should_prune():
                raise optuna.TrialPruned()

        result = train_config(data, config, seed=seed + trial.number, meta=meta, deadline=deadline, on_eval=report)
        trial.set_user_attr("best_step", result.best_step)
        models[trial.number] = result
        if len(models) > ENSEMBLE_POOL:  # keep memory flat: only the best few models stay
            del models[min(models, key=lambda n: models[n].score)]
        return result.score

    def objective(trial: optuna.Trial) -> float:
        nonlocal interrupted
        try:
            return run_trial(trial)
        except KeyboardInterrupt:  # end the study quietly; Optuna would log a FAIL with a traceback
            interrupted = True
            trial.set_user_attr("interrupted", True)
            study.stop()
            raise optuna.TrialPruned("interrupted") from None

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if on_progress is not None:
            finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            best_score = max((t.value for t in finished), default=float("nan"))
            on_progress(Progress(len(study.trials), best_score, time.monotonic() - start, time_budget))

    remaining = None if n_trials is None else max(0, n_trials - len(done))
    if remaining != 0:
        try:
            study.optimize(
                objective, n_trials=remaining, timeout=None if n_trials is not None else time_budget,
                callbacks=[callback], catch=(RuntimeError,),
            )
        except KeyboardInterrupt:
            interrupted = True
        except OperationalError as exc:
            raise StorageError(f"The study storage failed: {exc.orig}.", STORAGE_HINT) from exc
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        if interrupted:
            raise KeyboardInterrupt
        raise BudgetError(
            "No trial finished within the time budget.", "Give a larger --time-budget (seconds)."
        )
    top = max(complete, key=lambda t: t.value)
    config = NetConfig.from_json(top.user_attrs["config"])
    leaderboard = [
        {"trial": t.number, "score": t.value, "seconds": (t.duration.total_seconds() if t.duration else None),
         **t.user_attrs["config"]}
        for t in sorted(complete, key=lambda t: -t.value)
    ]
    n_pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    configs = {t.number: NetConfig.from_json(t.user_attrs["config"]) for t in complete}
    return SearchResult(config, float(top.value), top.number, models, leaderboard, configs, study.study_name,
                        len(complete), n_pruned, interrupted)
