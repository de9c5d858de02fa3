"""``metagen bench posterior``: ensembles sampled from a learned posterior over starts, against random starts.

On every table of a suite (the split ``bench adapt`` uses), ``members`` networks are
adapted for ``steps`` Adam steps each and their predictions averaged:

- ``posterior``: each member adapts its own sample of the meta-model's distribution over starts;
- ``mean``: each member adapts the posterior's mean start (its seed still picks the support rows
  and the batches): what the spread adds;
- ``random``: each member starts from its own random init of the same architecture.

All spend the same total steps. Reported on the held-back rows: the score (ROC-AUC or
R²), and for classes the log loss and the expected calibration error, plus how much the
members disagree (the mean standard deviation of their predictions).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from metagen.bench.adapt import plain_config, table_arrays
from metagen.meta_model import MetaModel, initial_network
from metagen.metrics import all_metrics, expected_calibration_error, selection_score
from metagen.train import predict_array, train_network
from task_corpus import TableRef


def posterior_table(ref: TableRef, meta: MetaModel, member: str, members: int = 5, steps: int = 100,
                    seed: int = 0) -> list[dict]:
    """One record per ensemble kind on this table."""
    task, X_tr, y_tr, X_te, y_te, n_out = table_arrays(ref, seed)
    arch, theta = meta.members[member]
    plain = plain_config(arch).with_(steps=steps)
    starts = {"posterior": meta, "mean": MetaModel({member: (arch, mean_of(theta))})}
    rows = []
    for kind in ("posterior", "mean", "random"):
        preds = []
        for m in range(members):
            member_seed = seed * 1000 + m
            init = None
            if kind in starts:
                init = initial_network(starts[kind], member, X_tr, y_tr, task, n_out, plain, steps=arch.inner_steps,
                                       seed=member_seed)
            config = plain if kind in starts else plain.with_(init="random")
            model = train_network(X_tr, y_tr, task, n_out, config, seed=member_seed, init=init).model
            preds.append(predict_array(model, X_te, task))
        blend = np.mean(preds, axis=0)
        metrics = all_metrics(task, y_te, blend)
        rows.append({
            "dataset": ref.name, "task": task, "ensemble": kind, "members": members, "steps": steps,
            "score": selection_score(task, y_te, blend),
            "log_loss": metrics.get("log_loss", np.nan),
            "ece": np.nan if task == "regression" else expected_calibration_error(y_te, blend),
            "disagreement": float(np.std(preds, axis=0).mean()),
        })
    return rows


def mean_of(theta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The posterior with no spread: every sample is its mean."""
    return {k: torch.full_like(v, -torch.inf) if k.startswith("post.") else v for k, v in theta.items()}


def summarise_posterior(records: list[dict]) -> list[dict]:
    """Means per ensemble kind, and on how many tables each is ahead of the random starts' ensemble."""
    frame = pd.DataFrame(records)
    wide = {k: g.set_index("dataset") for k, g in frame.groupby("ensemble", sort=False)}
    random = wide["random"]
    out = []
    for kind, group in wide.items():
        classes = group[group["task"] != "regression"]
        out.append({
            "ensemble": kind, "mean_score": float(group["score"].mean()),
            "mean_log_loss": float(classes["log_loss"].mean()), "mean_ece": float(classes["ece"].mean()),
            "mean_disagreement": float(group["disagreement"].mean()),
            "score_ahead_of_random": int((group["score"] > random.loc[group.index, "score"]).sum()),
            "log_loss_below_random": int((classes["log_loss"] < random.loc[classes.index, "log_loss"]).sum()),
            "tables": int(len(group)), "classification_tables": int(len(classes)),
        })
    return out
