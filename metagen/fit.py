"""The ``fit`` flow: Table -> split -> preprocessing -> search -> finalize -> FittedModel.

Each stage is one call with plain data between; the CLI and the scikit-learn
estimators both come through :func:`fit_table`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from metagen.config import NetConfig
from metagen.errors import ConfigError, DataError
from metagen.metrics import all_metrics, metric_name, selection_score
from metagen.network import MLP
from metagen.preprocess import Preprocessor, fit_preprocessor
from metagen.meta_model import MetaModel, member_config, shipped_meta_model
from metagen.search import Progress, SearchData, open_study, quiet_optuna, run_search, train_config
from metagen.table import Table
from metagen.train import TrainResult, predict_array

log = logging.getLogger(__name__)

# Share of the budget kept back for finalizing (ensemble selection, scoring, writing), at least a second.
FINALIZE_RESERVE = 0.08
# Validation and test rows are capped: every trial scores the validation rows many times,
# and 10,000 rows pin a score down to about 0.01 already.
MAX_HOLDOUT_ROWS = 10_000
# A learned start needs fewer and gentler steps than a random one.
META_STEPS = 200
META_LR = 1e-3
ENSEMBLE_ROUNDS = 10


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
    test_size: float = 0.2
    """Rows held back for the reported score (0 to use every row for the search)."""
    valid_size: float = 0.2
    max_steps: int | None = None
    """Upper bound of the steps per trial (the search space goes up to 2000)."""
    use_meta: bool = True
    """Start trials from the shipped meta-model's learned inits; False is the ``--no-meta`` reference search."""

    def __post_init__(self) -> None:
        if not self.time_budget > 0:
            raise ConfigError(f"time_budget must be positive, got {self.time_budget}.", "Pass seconds, e.g. 60.")
        if self.n_trials is not None and self.n_trials < 1:
            raise ConfigError(f"n_trials must be at least 1, got {self.n_trials}.")
        if not 0 <= self.test_size < 0.9 or not 0 < self.valid_size < 0.9:
            raise ConfigError("test_size and valid_size must be fractions between 0 and 0.9.")


@dataclass
class Member:
    """One network of the final ensemble and its share of the averaged prediction."""

    config: NetConfig
    state_dict: dict[str, torch.Tensor]
    weight: float = 1.0


@dataclass
class FittedModel:
    """Everything the model file holds: plain data and the members' state dicts."""

    columns: list[dict]
    target: str
    task: str
    classes: list | None
    preprocessor: Preprocessor
    members: list[Member]
    """The best trial's network first; the weights sum to one."""
    n_in: int
    n_out: int
    y_mean: float = 0.0
    y_std: float = 1.0
    metrics: dict[str, float] = field(default_factory=dict)
    valid_score: float = float("nan")
    leaderboard: list[dict] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    @property
    def config(self) -> NetConfig:
        """The best trial's configuration."""
        return self.members[0].config

    @cached_property
    def networks(self) -> list[MLP]:
        """In float64: a row's prediction must not depend on which rows share its batch."""
        nets = []
        for member in self.members:
            model = MLP(self.n_in, self.n_out, member.config)
            model.load_state_dict(member.state_dict)
            nets.append(model.double().eval())
        return nets

    def predict_raw(self, X: np.ndarray) -> np.ndarray:
        """Probabilities or values in target units, from preprocessed rows: the members' weighted mean."""
        out = sum(m.weight * predict_array(net, X, self.task) for m, net in zip(self.members, self.networks))
        return out * self.y_std + self.y_mean if self.task == "regression" else out


def select_ensemble(results: list[TrainResult], X_va: np.ndarray, y_va: np.ndarray, task: str,
                    rounds: int = ENSEMBLE_ROUNDS) -> list[tuple[int, float]]:
    """Greedy ensemble selection with replacement (Caruana et al., 2004) on the validation rows.

    ``results`` are ordered best first, so ties keep the better single model. Returns
    (index, weight) pairs; a single model comes back when no blend scores higher.
    """
    preds = [predict_array(r.model, X_va, task) for r in results]
    counts = np.zeros(len(results))
    blend = np.zeros_like(preds[0])
    for n in range(rounds):
        scores = [selection_score(task, y_va, (blend * n + p) / (n + 1)) for p in preds]
        j = int(np.nanargmax(scores))
        counts[j] += 1
        blend = (blend * n + preds[j]) / (n + 1)
    return [(int(j), counts[j] / rounds) for j in np.flatnonzero(counts)]


def first_configs(meta: MetaModel | None) -> list[NetConfig]:
    """Tried before the sampler takes over: the meta-model's portfolio (or the default without one),
    then each member's learned start."""
    if meta is None:
        return [NetConfig()]
    members = [member_config(arch, steps=META_STEPS, lr=META_LR) for arch, _ in meta.members.values()]
    return [*(meta.portfolio() or [NetConfig()]), *members]


def _split(n: int, y: np.ndarray, task: str, size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.arange(n)
    stratify = y if task != "regression" and np.bincount(y).min() >= 2 else None
    n_hold = min(max(1, int(round(size * n))), MAX_HOLDOUT_ROWS)
    if stratify is not None:
        n_hold = max(n_hold, len(np.unique(y)))
    if n - n_hold < 2:
        raise DataError(f"The table has only {n} usable rows.", "metagen needs at least a few rows per class to learn.")
    a, b = train_test_split(idx, test_size=n_hold, random_state=seed, stratify=stratify)
    return np.sort(a), np.sort(b)


@dataclass
class PreparedData:
    """A table split into fit / validation / test rows and preprocessed once per numeric scaling."""

    search: SearchData
    preprocessors: dict[str, Preprocessor]
    fit_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    y_mean: float = 0.0
    y_std: float = 1.0


def prepare_data(table: Table, options: FitOptions) -> PreparedData:
    """The rows every trial trains and is scored on, as ``fit`` and the proposer's performance table see them."""
    task, y = table.task, table.y
    if task != "regression":
        counts = np.bincount(y, minlength=len(table.classes or []))
        if len(y) < 2 * len(counts):
            raise DataError(
                f"The table has {len(y)} rows for {len(counts)} classes.",
                "metagen needs at least two rows per class.",
            )
    if options.test_size > 0:
        train_idx, test_idx = _split(len(y), y, task, options.test_size, options.seed)
    else:
        train_idx, test_idx = np.arange(len(y)), np.arange(0)
    fit_idx, val_idx = _split(len(train_idx), y[train_idx], task, options.valid_size, options.seed + 1)
    fit_idx, val_idx = train_idx[fit_idx], train_idx[val_idx]

    X_fit = table.X.iloc[fit_idx]
    preprocessors = {s: fit_preprocessor(X_fit, table.columns, s) for s in ("quantile", "robust")}
    y_mean, y_std = 0.0, 1.0
    if task == "regression":
        y_mean, y_std = float(y[fit_idx].mean()), float(y[fit_idx].std()) or 1.0
    y_model = (y - y_mean) / y_std if task == "regression" else y
    search = SearchData(
        X_tr={s: p.transform(X_fit) for s, p in preprocessors.items()},
        y_tr=y_model[fit_idx],
        X_va={s: p.transform(table.X.iloc[val_idx]) for s, p in preprocessors.items()},
        y_va=y_model[val_idx],
        task=task,
        n_out=1 if task == "regression" else len(table.classes or []),
    )
    return PreparedData(search, preprocessors, fit_idx, val_idx, test_idx, y_mean, y_std)


def fit_table(
    table: Table,
    options: FitOptions = FitOptions(),
    on_progress: Callable[[Progress], None] | None = None,
) -> FittedModel:
    start = time.monotonic()
    task, y = table.task, table.y
    prepared = prepare_data(table, options)
    data, preprocessors = prepared.search, prepared.preprocessors
    fit_idx, val_idx, test_idx = prepared.fit_idx, prepared.val_idx, prepared.test_idx
    n_out = data.n_out
    spent = time.monotonic() - start
    reserve = max(1.0, options.time_budget * FINALIZE_RESERVE)
    search_budget = max(1.0, options.time_budget - reserve - spent)
    meta = shipped_meta_model() if options.use_meta else None
    with quiet_optuna():
        study = open_study(options.storage, options.study_name, options.seed, options.resume)
        result = run_search(
            data, study, time_budget=search_budget, n_trials=options.n_trials, seed=options.seed,
            enqueue=first_configs(meta), max_steps=options.max_steps, on_progress=on_progress, meta=meta,
        )
    scaling = result.best_config.scaling
    models = dict(result.models)
    if result.best_trial not in models:  # the best trial ran in an earlier, resumed process: train it again
        models[result.best_trial] = train_config(data, result.best_config, seed=options.seed + result.best_trial,
                                                 meta=meta)
    # Members share the best trial's numeric scaling, so one preprocessor serves them all.
    order = [result.best_trial] + sorted(
        (n for n in models if n != result.best_trial and n in result.configs
         and result.configs[n].scaling == scaling), key=lambda n: -models[n].score)
    pool = [models[n] for n in order]
    chosen = select_ensemble(pool, data.X_va[scaling], data.y_va, task)
    members = [Member(result.configs[order[j]], {k: v.detach().clone() for k, v in pool[j].model.state_dict().items()},
                      w) for j, w in sorted(chosen, key=lambda jw: (jw[0] != 0, -jw[1]))]
    preprocessor = preprocessors[scaling]
    fitted = FittedModel(
        columns=table.schema(),
        target=table.target,
        task=task,
        classes=table.classes,
        preprocessor=preprocessor,
        members=members,
        n_in=preprocessor.n_features_out,
        n_out=n_out,
        y_mean=prepared.y_mean,
        y_std=prepared.y_std,
        valid_score=result.best_score,
        leaderboard=result.leaderboard,
        provenance={
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "n_rows": table.n_rows,
            "n_train_rows": int(len(fit_idx)),
            "n_valid_rows": int(len(val_idx)),
            "n_test_rows": int(len(test_idx)),
            "seed": options.seed,
            "time_budget": options.time_budget,
            "study_name": result.study_name,
            "n_trials_complete": result.n_complete,
            "n_trials_pruned": result.n_pruned,
            "ensemble_size": len(members),
            "interrupted": result.interrupted,
            "metric": metric_name(task),
            "fit_seconds": None,
        },
    )
    if len(test_idx):
        pred = fitted.predict_raw(preprocessor.transform(table.X.iloc[test_idx]))
        fitted.metrics = all_metrics(task, y[test_idx], pred)
    fitted.provenance["fit_seconds"] = round(time.monotonic() - start, 2)
    return fitted
