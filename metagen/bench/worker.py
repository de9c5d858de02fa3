"""One benchmark run, in a process forked for it alone (see :func:`metagen.bench.peers.run_once`).

The fork server preloads this module, so a run starts without paying metagen's and
torch's import time; the run's process is still its own, and killed whole on overrun.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import time
from pathlib import Path

import numpy as np

from metagen.bench.harness import Split, find_table, split_table
from metagen.metrics import all_metrics, selection_score


def predictions(model, split: Split) -> np.ndarray:  # noqa: ANN001
    """Regression values, or one probability column per class code (zeros for classes unseen in training)."""
    if split.task == "regression":
        return np.asarray(model.predict(split.X_test), dtype=np.float64)
    proba = np.asarray(model.predict_proba(split.X_test), dtype=np.float64)
    codes = np.asarray(model.classes_).astype(np.float64).astype(int)
    out = np.zeros((len(split.X_test), split.n_classes))
    out[:, codes] = proba
    return out


def run_job(job: dict) -> dict:
    """Load, split, fit on the train part, score on the test part; the fields of a RunRecord."""
    table = find_table(job["suite"], job["split"], job["dataset"])
    split = split_table(table, job["seed"], job["test_size"], job["max_train_rows"])
    module, function = job["factory"].split(":")
    model = getattr(importlib.import_module(module), function)(split.task, job["budget"], job["seed"], job["threads"])
    if job.get("families") and "families" in getattr(model, "get_params", dict)():
        model.set_params(families=list(job["families"]))
    start = time.perf_counter()
    model.fit(split.X_train, split.y_train)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    pred = predictions(model, split)
    predict_s = time.perf_counter() - start
    return {
        **all_metrics(split.task, split.y_test, pred),
        "score": selection_score(split.task, split.y_test, pred),
        "fit_s": fit_s,
        "predict_s": predict_s,
        "peak_mem_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "trials": getattr(model, "n_trials_", None),
        "n_train": len(split.y_train),
        "n_test": len(split.y_test),
    }


def child(job: dict, result_path: str, log_path: str) -> None:
    """Process entry: own process group (so a kill reaches its helpers), output to a log, result or error to JSON."""
    os.setsid()
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    try:
        result = run_job(job)
    except Exception as exc:  # noqa: BLE001 - any failure of a method is a recorded result
        result = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    Path(result_path).write_text(json.dumps({k: None if v != v else v for k, v in result.items()}))
