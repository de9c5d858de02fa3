"""The search stage of ``fit``: one Optuna study over every family's space, under a hard deadline.

The family is the study's first parameter and each family's parameters are named
after it, so TPE (with ``group=True``) models the conditional space. Known-good
candidates (the meta-model's portfolio, or each family's defaults) are enqueued
first, cheapest first; TPE takes over from there. A trial is scored as the
validation plan says (:func:`run_trial`) and reports as its family says: trees and
linear models their running score after every fold (a median pruner stops those
whose folds trail), networks their first fold's score at rungs of steps (successive
halving stops those that trail after a few dozen). Studies live in real Optuna
storage (:mod:`metagen.storage`) so a fit can be inspected, resumed, and shared by
workers: every process runs the same :func:`run_search` on the same study, and uploads the
trials it keeps to an artefact store so that the coordinator can blend them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from sqlalchemy.exc import OperationalError

from metagen.errors import BudgetError, StorageError
from metagen.families import FAMILIES, Candidate, Family, TaskInfo
from metagen.metrics import selection_score
from metagen.serving import Part
from metagen.storage import STORAGE_HINT, make_storage, wait_for_running
from metagen.train import Watch
from metagen.validation import ValidationPlan

log = logging.getLogger(__name__)

# Trials whose trained parts stay in memory for the final ensemble: the best overall, and per family.
POOL_SIZE = 20
POOL_PER_FAMILY = 5
# Errors that fail one trial (a diverging network, a degenerate fold) without ending the search.
TRIAL_ERRORS = (RuntimeError, ValueError, ArithmeticError)
# Trials that count towards a shared study's n_trials: a failed one (an error, a dead worker) is made up by another.
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@dataclass
class SearchData:
    """Every training row in every view a family reads, and how trials are scored."""

    views: dict[str, np.ndarray]
    y: np.ndarray
    """Class codes, or standardised values for regression."""
    plan: ValidationPlan
    info: TaskInfo

    @property
    def y_scored(self) -> np.ndarray:
        return self.y[self.plan.score_rows]

    def fingerprint(self) -> str:
        """A digest of every array a trial reads, so a worker proves it trains on what the coordinator scores."""
        digest = hashlib.sha256()
        arrays = [self.y, self.plan.score_rows] + [self.views[k] for k in sorted(self.views)]
        for rows in self.plan.folds:
            arrays += list(rows)
        for a in arrays:
            digest.update(str(a.shape).encode())
            digest.update(np.ascontiguousarray(a).tobytes())
        return digest.hexdigest()


@dataclass
class TrialResult:
    """A scored configuration and what it trained."""

    family: str
    config: dict[str, Any]
    score: float
    predictions: np.ndarray
    """Out-of-fold (or out-of-bag, or holdout) predictions of the plan's scored rows."""
    parts: list[Part]
    seconds: float
    needs_refit: bool
    """Trained on the fit rows of a holdout only: refit on every row before export."""
    trial: int | None = None
    details: dict = field(default_factory=dict)
    """What training reached (boosting rounds, trees, steps) and whether the deadline cut it."""


@dataclass
class Progress:
    n_done: int
    best_score: float
    elapsed: float
    budget: float
    family: str = ""
    first_model_s: float | None = None
    """Seconds into the search when the first usable model existed."""


@dataclass
class SearchResult:
    best_score: float
    best_trial: int
    pool: dict[int, TrialResult] = field(default_factory=dict)
    """The best trials' results by trial number (those that ran in this process), for the ensemble."""
    configs: dict[int, Candidate] = field(default_factory=dict)
    """Every complete trial's candidate by trial number."""
    leaderboard: list[dict] = field(default_factory=list)
    study_name: str = ""
    n_complete: int = 0
    n_pruned: int = 0
    interrupted: bool = False
    """Ctrl-C stopped the search; the result is the best trial finished before it."""
    first_model_s: float | None = None


class TrialIncomplete(Exception):
    """The deadline came before every fold of a trial was trained."""


def run_trial(
    data: SearchData,
    family: Family,
    config: dict[str, Any],
    *,
    seed: int,
    deadline: float | None = None,
    report: Callable[[int, float], None] | None = None,
) -> TrialResult:
    """Score one configuration as the plan says: out-of-bag, out-of-fold or on the holdout.

    ``report(step, score)`` hears the trial's running score (and may raise to stop it): at the family's rungs
    of steps on the first fold, or else after each fold.
    """
    started = time.monotonic()
    X, y, plan, info = data.views[family.view(config)], data.y, data.plan, data.info
    if family.out_of_bag:
        trained = family.train(X, y, config, info, seed=seed, deadline=deadline)
        predictions = trained.out_of_bag[plan.score_rows]
        score = selection_score(info.task, y[plan.score_rows], predictions)
        return TrialResult(family.name, config, _finite(score), predictions, [trained.part],
                           time.monotonic() - started, False,
                           details={**trained.details, "cut_by_deadline": trained.hit_deadline})
    shape = (len(y),) if info.regression else (len(y), info.n_out)
    oof = np.zeros(shape)
    parts, fold_scores, cut = [], [], False
    rungs = family.rungs(config) if report is not None else ()
    for k, (fit_rows, valid_rows) in enumerate(plan.folds):
        if deadline is not None and time.monotonic() > deadline:
            raise TrialIncomplete(f"the deadline came after {k} of {len(plan.folds)} folds")
        watch = Watch(X[valid_rows], y[valid_rows], rungs, report) if k == 0 and rungs else None
        trained = family.train(X[fit_rows], y[fit_rows], config, info, seed=seed + 1000 * k, deadline=deadline,
                               watch=watch)
        oof[valid_rows] = trained.part.predict(X[valid_rows])
        parts.append(trained.part)
        cut |= trained.hit_deadline
        fold_scores.append(_finite(selection_score(info.task, y[valid_rows], oof[valid_rows])))
        if report is not None and not rungs and len(plan.folds) > 1:
            report(k, float(np.mean(fold_scores)))
    predictions = oof[plan.score_rows]
    score = selection_score(info.task, y[plan.score_rows], predictions)
    return TrialResult(family.name, config, _finite(score), predictions, parts, time.monotonic() - started,
                       plan.refit, details={**trained.details, "cut_by_deadline": cut})


def worker_id() -> str:
    """Which process runs a trial (its user attr ``worker``): host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _finite(score: float) -> float:
    return float(score) if np.isfinite(score) else -np.inf


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """metagen shows its own progress; Optuna's per-trial log lines would drown it."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


class FamilyPruner(optuna.pruners.BasePruner):
    """Each family's trials are pruned by that family's pruner, in its own unit (folds, steps).

    The units never mix: a median over folds sees only trials that reported fold steps, and successive
    halving only trials that reached its rungs, so one study holds every family.
    """

    def __init__(self, families: tuple[str, ...] = tuple(FAMILIES)) -> None:
        self.pruners = {name: FAMILIES[name].pruner() for name in families}

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        pruner = self.pruners.get(trial.params.get("family"))
        return pruner is not None and pruner.prune(study, trial)


def _sampler(seed: int) -> optuna.samplers.TPESampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # ``group``, stable in practice
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=8,
                                           constant_liar=True)  # workers' running trials count as bad, not free


def open_study(storage: str | None, study_name: str, seed: int, resume: bool, *,
               heartbeat: int | None = None) -> optuna.Study:
    """Create the study (or load it with ``resume``) in a storage URL (:func:`metagen.storage.make_storage`), or in
    memory; ``heartbeat`` seconds let other processes find this one's trials when it dies.

    A resumed study's sampler is seeded past the trials it has, so it does not draw them again.
    """
    pruner = FamilyPruner()
    try:
        study = optuna.create_study(
            storage=make_storage(storage, heartbeat), study_name=study_name, direction="maximize",
            sampler=_sampler(seed), pruner=pruner, load_if_exists=resume,
        )
    except OperationalError as exc:
        raise StorageError(f"Cannot open the study storage: {exc.orig}.", STORAGE_HINT) from exc
    except optuna.exceptions.DuplicatedStudyError:
        raise StorageError(f"The storage already has a study named {study_name!r}.",
                           "Pass --resume to continue it, or another --study name.") from None
    if study.trials:
        study.sampler = _sampler(seed + len(study.trials))
    return study


def best_trials(scores: dict[int, tuple[str, float]]) -> set[int]:
    """The trials an ensemble may use, by number from (family, score): the best ``POOL_SIZE``, and the best few of
    every family beside them."""
    order = sorted(scores, key=lambda n: -scores[n][1])
    keep = set(order[:POOL_SIZE])
    for family in {f for f, _ in scores.values()}:
        keep |= set([n for n in order if scores[n][0] == family][:POOL_PER_FAMILY])
    return keep


def _keep_best(pool: dict[int, TrialResult]) -> None:
    """Keep memory flat: only the trials :func:`best_trials` keeps."""
    keep = best_trials({n: (r.family, r.score) for n, r in pool.items()})
    for n in list(pool):
        if n not in keep:
            del pool[n]


def run_search(
    data: SearchData,
    study: optuna.Study,
    families: tuple[str, ...],
    *,
    time_budget: float,
    n_trials: int | None = None,
    seed: int = 0,
    enqueue: list[Candidate] = (),
    max_steps: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_kept: Callable[[optuna.Trial, TrialResult], None] | None = None,
    wait_for_others: float = 0.0,
) -> SearchResult:
    """Run trials until the deadline, or until the study has ``n_trials`` finished (then the clock does not cut
    them; trials other processes are running then still finish).

    ``on_kept`` sees every trial that enters the pool, before it completes (a worker uploads it there);
    ``wait_for_others`` is how long to wait for trials other processes are running before the result is read.
    Ctrl-C ends the search early; the result then comes from the trials finished before it.
    """
    start = time.monotonic()
    deadline = None if n_trials is not None else start + time_budget
    impl = {name: FAMILIES[name](max_steps=max_steps) for name in families}
    worker = worker_id()
    pool: dict[int, TrialResult] = {}
    interrupted = False
    first_model_s: float | None = None
    done = [t for t in study.trials if t.state.is_finished()]
    remaining = None if n_trials is None else max(0, n_trials - len(done))
    if not done:
        for cand in [c for c in enqueue if c.family in impl][:remaining]:
            study.enqueue_trial(impl[cand.family].trial_params(cand.config), skip_if_exists=True)

    def objective(trial: optuna.Trial) -> float:
        nonlocal interrupted, first_model_s
        try:
            family = impl[trial.suggest_categorical("family", list(families))]
            config = family.suggest(trial, data.info)
            trial.set_user_attr("family", family.name)
            trial.set_user_attr("config", config)
            trial.set_user_attr("worker", worker)

            def report(step: int, score: float) -> None:
                trial.report(score, step)
                if trial.should_prune():
                    raise optuna.TrialPruned()

            try:
                result = run_trial(data, family, config, seed=seed + trial.number, deadline=deadline, report=report)
            except TrialIncomplete as exc:
                raise optuna.TrialPruned(str(exc)) from None
            result.trial = trial.number
            trial.set_user_attr("seconds", round(result.seconds, 3))
            trial.set_user_attr("trained", result.details)
            pool[trial.number] = result
            _keep_best(pool)
            if on_kept is not None and trial.number in pool:
                on_kept(trial, result)
            if first_model_s is None and np.isfinite(result.score):
                first_model_s = time.monotonic() - start
            return result.score
        except KeyboardInterrupt:  # end the study quietly; Optuna would log a FAIL with a traceback
            interrupted = True
            trial.set_user_attr("interrupted", True)
            study.stop()
            raise optuna.TrialPruned("interrupted") from None

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if on_progress is not None:
            finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            best_score = max((t.value for t in finished), default=float("nan"))
            on_progress(Progress(len(study.trials), best_score, time.monotonic() - start, time_budget,
                                 trial.user_attrs.get("family", ""), first_model_s))

    # Other processes' trials count too: the study stops when it has n_trials, whoever ran them.
    callbacks = [callback] + ([] if n_trials is None else [optuna.study.MaxTrialsCallback(n_trials, FINISHED)])
    if remaining != 0:
        try:
            study.optimize(
                objective, n_trials=remaining, timeout=None if n_trials is not None else time_budget,
                callbacks=callbacks, catch=TRIAL_ERRORS,
            )
            wait_for_running(study, wait_for_others)
        except KeyboardInterrupt:
            interrupted = True
        except OperationalError as exc:
            raise StorageError(f"The study storage failed: {exc.orig}.", STORAGE_HINT) from exc
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and np.isfinite(t.value)]
    if not complete:
        if interrupted:
            raise KeyboardInterrupt
        raise BudgetError("No trial finished within the time budget.", "Give a larger --time-budget (seconds).")
    top = max(complete, key=lambda t: t.value)
    configs = {t.number: Candidate(t.user_attrs["family"], t.user_attrs["config"]) for t in complete}
    leaderboard = [
        {"trial": t.number, "family": t.user_attrs["family"], "score": t.value,
         "seconds": t.user_attrs.get("seconds"),
         "params": FAMILIES[t.user_attrs["family"]]().summary(t.user_attrs["config"]), "config": t.user_attrs["config"]}
        for t in sorted(complete, key=lambda t: -t.value)
    ]
    n_pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    return SearchResult(float(top.value), top.number, pool, configs, leaderboard, study.study_name, len(complete),
                        n_pruned, interrupted, first_model_s)
