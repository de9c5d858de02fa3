"""Storage overhead per trial: the same trivial trials through every study storage, side by side.

A trial here makes the storage calls a metagen trial makes (the family and three parameters
drawn, four user attributes, one intermediate score per fold with a pruning check) and trains
nothing, with a random sampler, so its time is the storage's cost. Each storage gets a new
study; the file storages live in a temporary folder. RDB storages run with the heartbeat a
shared study uses, so the time includes its thread's writes.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import optuna

from metagen.search import quiet_optuna
from metagen.storage import make_storage

FOLDS = 5


def _trial(trial: optuna.Trial) -> float:
    family = trial.suggest_categorical("family", ["gbdt", "linear", "forest", "mlp"])
    config = {name: trial.suggest_float(f"{family}.{name}", 0.0, 1.0) for name in ("a", "b", "c")}
    for key, value in (("family", family), ("config", config), ("worker", "bench"), ("seconds", 0.0)):
        trial.set_user_attr(key, value)
    for fold in range(FOLDS):
        trial.report(sum(config.values()) / 3, fold)
        trial.should_prune()
    return sum(config.values())


def storage_overhead(n_trials: int, urls: dict[str, str | None], heartbeat: int = 10) -> list[dict]:
    """Seconds per trial of each storage (by label: URL, or None for in memory), and the overhead over in memory.

    A URL may contain ``{tmp}``, a temporary folder for file storages."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp, quiet_optuna():
        for label, url in urls.items():
            url = None if url is None else url.format(tmp=Path(tmp))
            study = optuna.create_study(storage=make_storage(url, heartbeat=heartbeat),
                                        study_name=f"bench-{time.time_ns()}", direction="maximize",
                                        sampler=optuna.samplers.RandomSampler(seed=0))
            started = time.perf_counter()
            study.optimize(_trial, n_trials=n_trials)
            rows.append({"storage": label, "ms per trial": 1000 * (time.perf_counter() - started) / n_trials})
    base = next((r["ms per trial"] for r in rows if r["storage"] == "memory"), 0.0)
    for row in rows:
        row["overhead ms"] = row["ms per trial"] - base
    return rows
