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

from metagen.errors import BudgetError
from metagen.config import NetConfig, suggest_config, trial_params
from metagen.train import TrainResult, train_network

log = logging.getLogger(__name__)


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
    best: TrainResult | None
    """The best trial's trained model, when it ran in this process (not on resume)."""
    leaderboard: list[dict] = field(default_factory=list)
    study_name: str = ""
    n_complete: int = 0
    n_pruned: int = 0


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """metagen shows its own progress; Optuna's per-trial log lines would drown it."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


def open_study(storage: str | None, study_name: str, seed: int, resume: bool) -> optuna.Study:
    """Create the study (or load it with ``resume``) in any Optuna storage URL, or in memory."""
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=8)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=50)
    return optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction="maximize",
        sampler=sampler,
        pruner=pruner,
        load_if_exists=resume,
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
) -> SearchResult:
    start = time.monotonic()
    deadline = start + time_budget
    best: TrainResult | None = None
    best_trial = -1
    done = [t for t in study.trials if t.state.is_finished()]
    if not done:
        for config in enqueue:
            study.enqueue_trial(trial_params(config, max_steps), skip_if_exists=True)

    def objective(trial: optuna.Trial) -> float:
        nonlocal best, best_trial
        config = suggest_config(trial, max_steps)

        def report(step: int, score: float) -> None:
            trial.report(score, step)
            if trial.should_prune():
                raise optuna.TrialPruned()

        result = train_network(
            data.X_tr[config.scaling], data.y_tr, data.X_va[config.scaling], data.y_va,
            data.task, data.n_out, config, seed=seed + trial.number, deadline=deadline, on_eval=report,
        )
        trial.set_user_attr("best_step", result.best_step)
        if best is None or result.score > best.score:
            best, best_trial = result, trial.number
        return result.score

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if on_progress is not None:
            finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            best_score = max((t.value for t in finished), default=float("nan"))
            on_progress(Progress(len(study.trials), best_score, time.monotonic() - start, time_budget))

    remaining = None if n_trials is None else max(0, n_trials - len(done))
    if remaining != 0:
        study.optimize(
            objective, n_trials=remaining, timeout=time_budget, callbacks=[callback], catch=(RuntimeError,),
        )
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise BudgetError(
            "No trial finished within the time budget.", "Give a larger --time-budget (seconds)."
        )
    top = max(complete, key=lambda t: t.value)
    config = NetConfig.from_json(top.params)
    result = best if best_trial == top.number else None
    leaderboard = [
        {"trial": t.number, "score": t.value, "seconds": (t.duration.total_seconds() if t.duration else None),
         **t.params}
        for t in sorted(complete, key=lambda t: -t.value)
    ]
    n_pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    return SearchResult(config, float(top.value), top.number, result, leaderboard, study.study_name,
                        len(complete), n_pruned)
