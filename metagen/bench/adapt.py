"""``metagen bench adapt``: does the learned start earn its place on tables it never saw?

On every table of a suite: one seeded train/test split, preprocessing fitted on the
train part, then the held-back score (ROC-AUC or R²) after K adaptation steps

- ``learned``: K Meta-SGD steps from the meta-model's start (the inner loop it was
  trained for: learned per-layer rates, batches of up to 512 rows);
- ``learned+adam``: the learned start after its inner steps, then K Adam steps (what a
  search trial does);
- ``random``: K Adam steps from a random init of the same architecture;
- ``untrained`` and ``untrained+adam``: the same with meta-parameters at their initial
  values (the ablation: what the start's architecture gives without meta-training).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from metagen.config import NetConfig
from metagen.maml import MetaArch, init_params
from metagen.meta_model import MetaModel, initial_network, member_config
from metagen.metrics import selection_score
from metagen.preprocess import NumericScaling, fit_preprocessor
from metagen.train import predict_array, train_network
from task_corpus import TableRef, load_table

LEARNED_K = (0, 5, 20, 100)
# The step counts search trials run: successive halving's first rungs up to a full trial.
ADAM_K = (20, 50, 100, 200, 500)
RANDOM_K = ADAM_K
FEW_STEPS = 50
"""The learned start must beat the random start's best (over ``RANDOM_K``) with this many steps."""
ADAM_LR = 1e-3
MAX_ROWS = 2000


def table_arrays(ref: TableRef, seed: int, scaling: NumericScaling = "quantile",
                 ) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Task kind, preprocessed train/test arrays (regression targets standardised), outputs."""
    from sklearn.model_selection import train_test_split

    parsed = load_table(ref).to_table()
    y = parsed.y
    stratify = y if parsed.task != "regression" and np.bincount(y).min() >= 2 else None
    train, test = train_test_split(np.arange(len(y)), test_size=0.3, random_state=seed, stratify=stratify)
    train, test = train[:MAX_ROWS], test[:MAX_ROWS]
    prep = fit_preprocessor(parsed.X.iloc[train], parsed.columns, scaling)
    X_tr, X_te = prep.transform(parsed.X.iloc[train]), prep.transform(parsed.X.iloc[test])
    y_tr, y_te = y[train], y[test]
    if parsed.task == "regression":
        mu, sd = y_tr.mean(), y_tr.std() or 1.0
        y_tr, y_te = (y_tr - mu) / sd, (y_te - mu) / sd
    n_out = 1 if parsed.task == "regression" else len(parsed.classes)
    return parsed.task, X_tr, y_tr, X_te, y_te, n_out


def plain_config(arch: MetaArch, init: str | None = None) -> NetConfig:
    """The constant-rate, no-dropout network both starts are trained as (``init="random"`` for a random one)."""
    config = member_config(arch, dropout=0.0, schedule="constant", lr=ADAM_LR, batch_size=256)
    return config if init is None else config.with_(init=init)


def adapt_table(ref: TableRef, meta: MetaModel, member: str, seed: int = 0) -> list[dict]:
    """The records of one table: one per (init, K)."""
    task, X_tr, y_tr, X_te, y_te, n_out = table_arrays(ref, seed)
    arch = meta.members[member][0]
    plain = plain_config(arch)
    rows = []

    def record(init: str, k: int, model) -> None:  # noqa: ANN001
        score = selection_score(task, y_te, predict_array(model, X_te, task))
        rows.append({"dataset": ref.name, "task": task, "member": member, "init": init, "k": k, "score": score})

    untrained = MetaModel({member: (arch, init_params(arch, seed))})
    for k in LEARNED_K:
        record("learned", k, initial_network(meta, member, X_tr, y_tr, task, n_out, plain, steps=k, seed=seed))
        record("untrained", k, initial_network(untrained, member, X_tr, y_tr, task, n_out, plain, steps=k,
                                               seed=seed))
    for name, model in (("learned", meta), ("untrained", untrained)):
        start = initial_network(model, member, X_tr, y_tr, task, n_out, plain, steps=arch.inner_steps, seed=seed)
        for k in ADAM_K:
            tuned = train_network(X_tr, y_tr, task, n_out, plain.with_(steps=k), seed=seed, init=start)
            record(f"{name}+adam", k, tuned.model)
    random_config = plain_config(arch, init="random")
    for k in RANDOM_K:
        record("random", k, train_network(X_tr, y_tr, task, n_out, random_config.with_(steps=k),
                                          seed=seed).model)
    return rows


def summarise_adapt(records: list[dict]) -> list[dict]:
    """Mean score per (init, K), and on how many tables it beats the random start at the same K."""
    frame = pd.DataFrame(records)
    random = frame[frame["init"] == "random"].set_index(["dataset", "k"])["score"]
    out = []
    for (init, k), group in frame.groupby(["init", "k"], sort=False):
        scores = group.set_index("dataset")["score"]
        same_k = [(d, k) in random.index for d in scores.index]
        ahead = (scores[same_k].to_numpy() > random.loc[[(d, k) for d in scores.index[same_k]]].to_numpy()).sum()
        out.append({"init": init, "k": int(k), "mean_score": float(scores.mean()),
                    "ahead_of_random_same_k": int(ahead) if any(same_k) else None, "tables": int(len(scores))})
    return out


def adapt_verdict(summary: list[dict], start: str = "learned+adam") -> dict:
    """The two questions the benchmark answers: does ``start`` with ``FEW_STEPS`` steps beat the random start
    at its best step count, and is it ahead at every K both ran?"""
    means = {(r["init"], r["k"]): r["mean_score"] for r in summary}
    random = {k: v for (init, k), v in means.items() if init == "random"}
    best_k = max(random, key=random.get)
    few = means.get((start, FEW_STEPS), float("nan"))
    shared = sorted(k for (init, k) in means if init == start and k in random)
    return {"start": start, f"mean_at_{FEW_STEPS}": few, "random_best_k": best_k, "random_best_mean": random[best_k],
            f"beats_random_best_at_{FEW_STEPS}": bool(few > random[best_k]),
            "ahead_at_every_k": bool(shared) and all(means[(start, k)] > random[k] for k in shared),
            "behind_at_k": [k for k in shared if means[(start, k)] <= random[k]]}
