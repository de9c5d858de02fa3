"""The ``fit`` flow: Table -> views and validation plan -> search over families -> ensemble -> FittedModel.

Each stage is one call with plain data between; the CLI and the scikit-learn
estimators both come through :func:`fit_table`, and a proposer or a meta-model
is passed in rather than reached for. With ``shared`` the fit is the coordinator of
a study that workers (:mod:`metagen.workers`) run trials of too: it publishes what they
need in the study (:data:`CARD`), and blends every process's best trials, read back
from the artefact store.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import zip_longest
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from metagen.ensemble import select_ensemble
from metagen.errors import ConfigError, DataError
from metagen.families import FAMILIES, Candidate, TaskInfo, parse_families
from metagen.meta_model import MetaModel, shipped_meta_model
from metagen.metrics import all_metrics, metric_name, selection_score
from metagen.model import FittedModel, Member
from metagen.preprocess import Preprocessor, fit_preprocessor
from metagen.proposer import Proposal, load_proposer, order_by_gain
from metagen.search import (Progress, SearchData, TrialResult, best_trials, open_study, quiet_optuna, run_search,
                            run_trial, worker_id)
from metagen.storage import artifact_store, default_artifacts, download_results, upload_result
from metagen.table import Table
from metagen.task_features import task_features
from metagen.validation import KFOLD_MAX_ROWS, holdout, make_plan

log = logging.getLogger(__name__)

# Share of the budget kept back for finalizing (ensemble selection, scoring, writing), at least a second.
FINALIZE_RESERVE = 0.06
# Share of what is left that the search gets when members must be trained again on every row afterwards.
REFIT_SEARCH_SHARE = 0.7
# Defaults are tried cheapest family first, so a usable model exists within seconds.
CHEAP_FIRST = ("linear", "gbdt", "forest", "mlp")
# Most proposals enqueued before the sampler takes over.
MAX_PROPOSALS = 12
# A zero-shot fit trains the best proposal expected to take at most this long (every fold).
ZERO_SHOT_SECONDS = 10.0
# Rows per timed batch when members are measured against ``infer_limit``.
INFER_BATCH = 1000
# Rows of the reported score whose predictions the model file keeps (for the report's plots).
SCORED_KEEP = 2000
# The study's user attr that tells a worker what to run: the fit's options, the data's fingerprint, the deadline.
CARD = "metagen.fit"
# Most seconds a shared fit with a trial count waits for the trials workers are still running (a journal storage
# cannot tell a dead worker's trial from a slow one; one that runs longer is left out).
WAIT_FOR_WORKERS = 60.0


@dataclass(frozen=True)
class FitOptions:
    """How ``fit`` spends its budget."""

    time_budget: float = 60.0
    """Seconds for the whole fit; the search stops launching and running trials at the deadline."""
    n_trials: int | None = None
    """Run exactly this many trials, the clock aside (reproducible runs); None: as many as the budget allows."""
    seed: int = 0
    storage: str | None = None
    """Optuna storage URL (``sqlite:///study.db``, any RDB URL); None keeps the study in memory."""
    study_name: str = "metagen"
    resume: bool = False
    test_size: float = 0.0
    """Rows held back for a reported score, after which the members are refit on every row; 0: the
    reported score is out-of-fold."""
    max_steps: int | None = None
    """Upper bound of the steps per network trial (the space goes up to 2000)."""
    use_meta: bool = True
    """Start from the shipped meta-model's portfolio and learned inits; False is the ``--no-meta`` reference."""
    families: tuple[str, ...] | None = None
    """Model families to search (``mlp``, ``gbdt``, ``forest``, ``linear``); None: all of them."""
    kfold_max_rows: int = KFOLD_MAX_ROWS
    """Tables up to this many training rows are scored out-of-fold; larger ones on a holdout."""
    infer_limit: float | None = None
    """Seconds per row the final model may take to predict (rows in batches of ``INFER_BATCH``, preprocessing
    included); the ensemble is chosen among members that keep within it. None: no limit."""
    zero_shot: bool = False
    """No search: train the proposer's best quick proposal (one trial) and export it."""
    shared: bool = False
    """Workers (``metagen worker``) run trials of this study too: the study says what to run, running trials record
    heartbeats, and every process uploads its best trials to ``artifacts`` for the ensemble."""
    artifacts: str | None = None
    """Folder of the artefact store every process of a shared study sees. None: beside the SQLite or journal file."""
    heartbeat: int = 10
    """Seconds between a running trial's heartbeats in a shared study (RDB storages)."""

    def __post_init__(self) -> None:
        if not self.time_budget > 0:
            raise ConfigError(f"time_budget must be positive, got {self.time_budget}.", "Pass seconds, e.g. 60.")
        if self.n_trials is not None and self.n_trials < 1:
            raise ConfigError(f"n_trials must be at least 1, got {self.n_trials}.")
        if self.infer_limit is not None and not self.infer_limit > 0:
            raise ConfigError(f"infer_limit must be positive seconds per row, got {self.infer_limit}.",
                              "Pass e.g. 1e-5 (100,000 rows per second), or leave it out.")
        if not 0 <= self.test_size < 0.9:
            raise ConfigError(f"test_size must be a fraction in [0, 0.9), got {self.test_size}.")
        object.__setattr__(self, "families", parse_families(self.families))
        if self.shared:
            if self.storage is None:
                raise ConfigError("A study shared with workers needs a storage every process opens.",
                                  "Pass storage='journal:///study.log' (one machine), a sqlite:/// file, "
                                  "or postgresql://... (several machines).")
            artifacts = self.artifacts or default_artifacts(self.storage)
            if artifacts is None:
                raise ConfigError(f"Where should workers put their trained trials for {self.storage}?",
                                  "Pass artifacts (--artifacts DIR), a folder every machine sees.")
            object.__setattr__(self, "artifacts", str(Path(artifacts).resolve()))


@dataclass
class PreparedData:
    """A table's training rows in every view, its held-back rows, and the scaling of a numeric target."""

    search: SearchData
    views: dict[str, Preprocessor]
    train_idx: np.ndarray
    test_idx: np.ndarray
    y_mean: float = 0.0
    y_std: float = 1.0


def prepare_data(table: Table, options: FitOptions, meta: MetaModel | None = None) -> PreparedData:
    """The rows every trial trains and is scored on, as ``fit`` and the performance table see them."""
    task, y = table.task, table.y
    if task != "regression":
        counts = np.bincount(y, minlength=len(table.classes or []))
        if len(y) < 2 * len(counts):
            raise DataError(f"The table has {len(y)} rows for {len(counts)} classes.",
                            "metagen needs at least two rows per class.")
    if options.test_size > 0:
        train_idx, test_idx = holdout(len(y), y, task, options.test_size, options.seed)
    else:
        train_idx, test_idx = np.arange(len(y)), np.arange(0)
    X_train = table.X.iloc[train_idx]
    # Column statistics do not depend on the scaling: fit them once, and transform only the views
    # that the families searched read (the ordinal one always describes the columns to them).
    columns = fit_preprocessor(X_train, table.columns).columns
    needed = sorted({view for name in options.families for view in FAMILIES[name].views})
    views = {s: Preprocessor(s, columns) for s in needed}
    ordinal = Preprocessor("ordinal", columns)
    y_mean, y_std = 0.0, 1.0
    if task == "regression":
        y_mean, y_std = float(y[train_idx].mean()), float(y[train_idx].std()) or 1.0
    y_model = (y - y_mean) / y_std if task == "regression" else y
    info = TaskInfo(task=task, n_out=1 if task == "regression" else len(table.classes or []),
                    n_rows=len(train_idx), n_columns=ordinal.n_features_out,
                    categorical=tuple(ordinal.categorical), meta=meta)
    search = SearchData(
        views={s: p.transform(X_train) for s, p in views.items()}, y=y_model[train_idx],
        plan=make_plan(y_model[train_idx], task, options.seed + 1, kfold_max_rows=options.kfold_max_rows),
        info=info,
    )
    return PreparedData(search, views, train_idx, test_idx, y_mean, y_std)


def rank_proposals(table: Table, prepared: PreparedData, meta: MetaModel | None, families: tuple[str, ...],
                   seed: int) -> list[Proposal]:
    """The meta-model's proposals for this table, the best predicted first; none without a proposer."""
    proposer = load_proposer(meta)
    if proposer is None:
        return []
    features = task_features(table, meta, rows=proposer.rows, seed=seed, among=prepared.train_idx)
    plan = prepared.search.plan
    return proposer.propose(features, families, prepared.search.info.n_rows,
                            folds=len(plan.folds) if plan.kind == "kfold" else 1)


def zero_shot_pick(ranked: list[Proposal], families: tuple[str, ...], info: TaskInfo) -> Candidate:
    """The best proposal expected to train within ``ZERO_SHOT_SECONDS``; without one, the first default."""
    quick = [p for p in ranked if p.seconds <= ZERO_SHOT_SECONDS]
    return quick[0].candidate if quick else first_candidates([], families, info)[0]


def first_candidates(proposals: list[Proposal], families: tuple[str, ...], info: TaskInfo) -> list[Candidate]:
    """Tried before the sampler takes over: the proposals and the families' defaults, cheapest family first
    (the network family's defaults include the meta-model's learned starts).

    Across several families the picks and the defaults take turns. Why: the proposer learned from small tables,
    and on tables unlike them a family's defaults often beat its first pick; one of each early hedges its misses
    without giving up its hits. Within one family the picks go first: there a default only displaces a pick
    (README, "Results": on dev-eval the turns lifted the four-family search and slowed the networks-only one).
    """
    per_family = [[Candidate(name, config) for config in FAMILIES[name]().defaults(info)]
                  for name in CHEAP_FIRST if name in families]
    defaults = [cand for rank in zip_longest(*per_family) for cand in rank if cand is not None]
    picked = [p.candidate for p in proposals if p.candidate.family in families]
    queue = ([c for pair in zip_longest(picked, defaults) for c in pair if c is not None] if len(per_family) > 1
             else picked + defaults)
    out: list[Candidate] = []
    for cand in queue:
        if cand not in out:
            out.append(cand)
    return out


def _refit(result: TrialResult, data: SearchData, X_rows: dict[str, np.ndarray], y_rows: np.ndarray, seed: int,
           deadline: float) -> bool:
    """Train the member again as one model on every row, if its last training time fits before ``deadline``."""
    family = FAMILIES[result.family]()
    # A part saw about 80 % of the training rows (a fold or the holdout's fit rows); cost grows with rows.
    expected = result.seconds / max(1, len(result.parts)) * len(y_rows) / (0.8 * data.info.n_rows)
    if time.monotonic() + 1.2 * expected > deadline:
        return False
    trained = family.train(X_rows[family.view(result.config)], y_rows, result.config, data.info, seed=seed,
                           deadline=deadline)
    result.parts = [trained.part]
    return True


def _seconds_per_row(run: Callable[[], object], rows: int) -> float:
    started = time.perf_counter()
    run()
    return (time.perf_counter() - started) / rows


def _predict_costs(results: list[TrialResult], data: SearchData, table: Table,
                   views: dict[str, Preprocessor]) -> tuple[list[float], float]:
    """Seconds per row of each result's parts on a batch of rows, and of preprocessing into every view."""
    rows = np.arange(min(INFER_BATCH, len(data.y)))
    batch = table.X.iloc[rows]
    fixed = sum(_seconds_per_row(lambda v=view: v.transform(batch), len(rows)) for view in views.values())
    costs = []
    for r in results:
        X = data.views[FAMILIES[r.family]().view(r.config)][rows]
        costs.append(_seconds_per_row(lambda: [part.predict(X) for part in r.parts], len(rows)))
    return costs, fixed


def fit_table(
    table: Table,
    options: FitOptions = FitOptions(),
    on_progress: Callable[[Progress], None] | None = None,
    meta: MetaModel | None = None,
) -> FittedModel:
    """Search every family in ``options.families`` and blend the best into one model.

    ``meta`` overrides the shipped meta-model (the proposer's portfolio and the learned starts).
    """
    start = time.monotonic()
    task, y = table.task, table.y
    if meta is None and options.use_meta:
        meta = shipped_meta_model()
    meta = meta if options.use_meta else None
    prepared = prepare_data(table, options, meta)
    data = prepared.search
    plan, info = data.plan, data.info
    refit_after = plan.refit or len(prepared.test_idx) > 0
    ranked = rank_proposals(table, prepared, meta, options.families, options.seed)
    left = options.time_budget - (time.monotonic() - start)  # after the proposer: its landmarkers take time too
    reserve = max(1.0, options.time_budget * FINALIZE_RESERVE)
    others = reserve / 2 if options.shared else 0.0  # waiting for the workers' last trials, after the deadline
    search_budget = max(1.0, (left - reserve - others) * (REFIT_SEARCH_SHARE if refit_after else 1.0))
    if options.zero_shot:
        enqueue, n_trials = [zero_shot_pick(ranked, options.families, info)], 1
        proposals = [p for p in ranked if p.candidate == enqueue[0]]
    else:
        # With a trial count the clock must not change which trials run: no budget bounds the proposals.
        proposals = order_by_gain(ranked, math.inf if options.n_trials else search_budget, limit=MAX_PROPOSALS)
        enqueue, n_trials = first_candidates(proposals, options.families, info), options.n_trials
    store = artifact_store(options.artifacts) if options.shared else None
    with quiet_optuna():
        study = open_study(options.storage, options.study_name, options.seed, options.resume,
                           heartbeat=options.heartbeat if options.shared else None)
        if options.shared:
            study.set_user_attr(CARD, _card(table, options, data, n_trials, search_budget))
        result = run_search(
            data, study, options.families, time_budget=search_budget, n_trials=n_trials, seed=options.seed,
            enqueue=enqueue, max_steps=options.max_steps, on_progress=on_progress,
            on_kept=None if store is None else lambda trial, r: upload_result(trial, r, store),
            wait_for_others=WAIT_FOR_WORKERS if options.shared and n_trials else others,
        )
    pool = dict(result.pool)
    loaded: dict[int, TrialResult] = {}
    if store is not None:  # the best trials other processes ran (or this one, before a --resume)
        scores = {row["trial"]: (row["family"], row["score"]) for row in result.leaderboard}
        loaded = download_results(study, store, best_trials(scores) - set(pool))
        pool.update(loaded)
    if result.best_trial not in pool:  # the best trial ran in an earlier, resumed process: train it again
        best = result.configs[result.best_trial]
        pool[result.best_trial] = run_trial(data, FAMILIES[best.family](), best.config,
                                            seed=options.seed + result.best_trial)
        pool[result.best_trial].trial = result.best_trial
    order = sorted(pool, key=lambda n: (n != result.best_trial, -pool[n].score))
    costs, limit = None, None
    if options.infer_limit is not None:
        costs, fixed = _predict_costs([pool[n] for n in order], data, table, prepared.views)
        limit = options.infer_limit - fixed
    chosen = select_ensemble([pool[n].predictions for n in order], data.y_scored, task, costs=costs, limit=limit)
    chosen.sort(key=lambda jw: (jw[0] != 0, -jw[1]))
    members = [(pool[order[j]], w) for j, w in chosen]
    blend = sum(w * r.predictions for r, w in members)
    ensemble_score = selection_score(task, data.y_scored, blend)

    fitted = FittedModel(
        columns=table.schema(), target=table.target, task=task, classes=table.classes,
        views={}, members=[], n_out=info.n_out, y_mean=prepared.y_mean, y_std=prepared.y_std,
        valid_score=result.best_score, leaderboard=result.leaderboard,
    )
    weights = {r.trial: w for r, w in members}
    for row in fitted.leaderboard:
        row["weight"] = round(weights.get(row["trial"], 0.0), 4)
    fitted.members = [Member(r.family, r.config, FAMILIES[r.family]().view(r.config), r.parts, w, r.score, r.trial)
                      for r, w in members]
    fitted.views = {m.view: prepared.views[m.view] for m in fitted.members}

    def unscale(pred: np.ndarray) -> np.ndarray:
        return pred * prepared.y_std + prepared.y_mean if task == "regression" else pred

    if len(prepared.test_idx):
        scored_rows, scored = prepared.test_idx, fitted.predict_raw(table.X.iloc[prepared.test_idx])
        source = f"held-back rows ({len(prepared.test_idx)})"
    else:
        scored_rows, scored = prepared.train_idx[plan.score_rows], unscale(blend)
        source = ("out-of-fold predictions" if plan.kind == "kfold" else "validation rows") + \
            f" ({len(plan.score_rows)} rows; the ensemble was chosen on them too)"
    fitted.metrics = all_metrics(task, y[scored_rows], scored)
    n_refit = 0
    if refit_after:
        deadline = start + options.time_budget - 0.5 * reserve
        X_all = ({name: view.transform(table.X) for name, view in fitted.views.items()} if len(prepared.test_idx)
                 else data.views)
        y_all = (y - prepared.y_mean) / prepared.y_std if task == "regression" else y
        for (r, _), member in zip(members, fitted.members):
            if r.needs_refit or len(prepared.test_idx):
                if _refit(r, data, X_all, y_all, options.seed + 7919, deadline):
                    member.parts = r.parts
                    n_refit += 1
    fitted.provenance = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_rows": table.n_rows,
        "n_train_rows": int(len(prepared.train_idx)),
        "n_test_rows": int(len(prepared.test_idx)),
        "validation": plan.kind,
        "n_folds": len(plan.folds) if plan.kind == "kfold" else 0,
        "n_scored_rows": int(len(plan.score_rows)),
        "score_source": source,
        "ensemble_score": ensemble_score,
        "members_refit_on_all_rows": n_refit,
        "members_from_artifacts": sum(m.trial in loaded for m in fitted.members),
        "trials_from_artifacts": len(loaded),
        "seed": options.seed,
        "time_budget": options.time_budget,
        "families": list(options.families),
        "study_name": result.study_name,
        "n_trials_complete": result.n_complete,
        "n_trials_pruned": result.n_pruned,
        "first_model_s": None if result.first_model_s is None else round(result.first_model_s, 2),
        "proposer": meta.spec["proposer"]["kind"] if ranked and meta is not None else None,
        "proposals": [{"family": p.candidate.family, "config": p.candidate.config,
                       "predicted_score": round(p.score, 4), "predicted_seconds": round(p.seconds, 3)}
                      for p in proposals],
        "zero_shot": options.zero_shot,
        "ensemble_size": len(fitted.members),
        "infer_limit": options.infer_limit,
        "interrupted": result.interrupted,
        "metric": metric_name(task),
        "fit_seconds": round(time.monotonic() - start, 2),
        "scored": _scored_sample(scored_rows, y[scored_rows], scored, options.seed),
    }
    return fitted


def _card(table: Table, options: FitOptions, data: SearchData, n_trials: int | None, search_budget: float) -> dict:
    """What a worker needs to run this fit's trials on its own copy of the table, and to check that it is the same."""
    return {
        "target": table.target, "task": table.task,
        "options": {"families": list(options.families), "seed": options.seed, "max_steps": options.max_steps,
                    "use_meta": options.use_meta, "kfold_max_rows": options.kfold_max_rows,
                    "test_size": options.test_size, "n_trials": n_trials},
        "fingerprint": data.fingerprint(),
        "deadline": None if n_trials else time.time() + search_budget,
        "heartbeat": options.heartbeat,
        "artifacts": options.artifacts,
        "coordinator": worker_id(),
    }


def _scored_sample(rows: np.ndarray, y: np.ndarray, pred: np.ndarray, seed: int) -> dict:
    """The reported score's rows (a seeded sample of at most ``SCORED_KEEP``), targets and predictions, so that a
    report draws its confusion matrix, ROC curve or residuals from the model file alone."""
    keep = np.sort(np.random.default_rng(seed).permutation(len(rows))[:SCORED_KEEP])
    return {"rows": rows[keep].tolist(), "y": y[keep].tolist(), "pred": np.round(pred[keep], 6).tolist()}
