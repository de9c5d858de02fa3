"""``metagen bench ablate``: what each part of the learned start adds, on tables it never saw.

Every variant is meta-trained for the same number of steps per architecture on the same
task pool (drawn once per input scaling), then scored on each table as ``bench adapt``
scores the learned start: the start alone (K=0), after its Meta-SGD inner steps, and
after those plus 20 Adam steps (what a search trial does). A random init of the base
architecture after 100 Adam steps is the reference every variant is counted against.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from metagen.bench.adapt import plain_config, table_arrays
from metagen.maml import MetaArch, Params, init_params, slice_theta
from metagen.meta_model import MetaModel, initial_network
from metagen.meta_train import PRESETS, MetaTrainConfig, meta_train
from metagen.metrics import selection_score
from metagen.preprocess import NumericScaling
from metagen.train import predict_array, train_network
from task_corpus import SamplerConfig, TableRef, TaskSampler

BASE = MetaArch(depth=2, width=128)
SUPERNET = MetaArch(depth=3, width=256)
ADAM_STEPS = 20
REFERENCE_STEPS = 100


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: the architecture scored, and how its meta-parameters are trained."""

    arch: MetaArch
    scaling: NumericScaling = "quantile"
    supernet: MetaArch | None = None
    """Train this supernet on alternating slices (``BASE`` and itself), then slice ``arch`` out of it."""
    trained: bool = True


VARIANTS: dict[str, Variant] = {
    "base": Variant(BASE),  # generated front, Meta-SGD, quantile-normal inputs, no FiLM
    "untrained": Variant(BASE, trained=False),  # the same start without meta-training
    "pca-front": Variant(replace(BASE, front="pca")),
    "random-front": Variant(replace(BASE, front="random")),
    "no-meta-sgd": Variant(replace(BASE, meta_sgd=False)),  # inner rates fixed at their initial 0.05
    "film": Variant(replace(BASE, film=True)),
    "pca-front+film": Variant(replace(BASE, front="pca", film=True)),
    "robust-scaling": Variant(BASE, scaling="robust"),  # inputs not mapped to one canonical distribution
    "slice-d2w128": Variant(BASE, supernet=SUPERNET),  # family member vs slice of a supernet
    "family-d3w256": Variant(SUPERNET),
    "slice-d3w256": Variant(SUPERNET, supernet=SUPERNET),
}


def train_variant(variant: Variant, pool: list, config: MetaTrainConfig) -> tuple[MetaArch, Params]:
    """The trained architecture (the supernet, if any) and its meta-parameters.

    A supernet takes twice the steps, alternating its two slices, so each gets ``config.steps``.
    """
    trained = variant.supernet or variant.arch
    if not variant.trained:
        return trained, init_params(trained, config.seed)
    slices = () if variant.supernet is None else (BASE, variant.supernet)
    steps = config.steps * max(1, len(slices))
    state = meta_train(trained, pool, replace(config, steps=steps, inner_steps=trained.inner_steps), slices=slices)
    return trained, {k: v.detach() for k, v in state.theta.items()}


def score_variant(name: str, variant: Variant, meta: MetaModel, splits: dict[str, tuple], seed: int) -> list[dict]:
    """One record per table and stage: the start, after its inner steps, and after 20 more Adam steps."""
    arch = variant.arch
    plain = plain_config(arch)
    rows = []
    for dataset, (task, X_tr, y_tr, X_te, y_te, n_out) in splits.items():
        inner = initial_network(meta, arch.name, X_tr, y_tr, task, n_out, plain, steps=arch.inner_steps, seed=seed)
        models = {
            "start": initial_network(meta, arch.name, X_tr, y_tr, task, n_out, plain, steps=0, seed=seed),
            "inner": inner,
            "inner+adam20": train_network(X_tr, y_tr, task, n_out, plain.with_(steps=ADAM_STEPS),
                                          seed=seed, init=inner).model,
        }
        for k, model in models.items():
            score = selection_score(task, y_te, predict_array(model, X_te, task))
            rows.append({"variant": name, "dataset": dataset, "task": task, "k": k, "score": score})
    return rows


def reference_scores(splits: dict[str, tuple], seed: int) -> dict[str, float]:
    """Held-back score of the base architecture after 100 Adam steps from a random init, per table."""
    config = plain_config(BASE, init="random")
    scores = {}
    for dataset, (task, X_tr, y_tr, X_te, y_te, n_out) in splits.items():
        model = train_network(X_tr, y_tr, task, n_out, config.with_(steps=REFERENCE_STEPS),
                              seed=seed).model
        scores[dataset] = selection_score(task, y_te, predict_array(model, X_te, task))
    return scores


def run_ablation(
    train_tables: list[TableRef],
    eval_refs: list[TableRef],
    variants: dict[str, Variant],
    *,
    steps: int,
    pool: int,
    seed: int = 0,
    on_variant: Callable[[str, float], None] | None = None,
) -> tuple[list[dict], dict[str, float], dict[str, float]]:
    """Records per (variant, table, K), the random-init reference per table, and meta-training seconds per variant."""
    preset = PRESETS["full"]
    config = replace(preset.train, steps=steps, pool=pool, seed=seed)
    base_sampler = SamplerConfig(n_support=preset.n_support, n_query=preset.n_query,
                                 max_columns=preset.max_columns, real_share=preset.real_share)
    pools: dict[str, list] = {}
    splits: dict[str, dict[str, tuple]] = {}  # per input scaling: each table's preprocessed train/test arrays
    trained: dict[tuple, tuple[MetaArch, Params, float]] = {}
    records, seconds = [], {}
    for name, variant in variants.items():
        if variant.scaling not in pools:
            sampler = TaskSampler(train_tables, replace(base_sampler, scaling=variant.scaling), seed=seed)
            pools[variant.scaling] = [sampler.sample(i) for i in range(pool)]
            splits[variant.scaling] = {ref.name: table_arrays(ref, seed, variant.scaling) for ref in eval_refs}
        key = (variant.supernet or variant.arch, variant.supernet is not None, variant.scaling, variant.trained)
        if key not in trained:  # both slices of one supernet come from one training run
            started = time.monotonic()
            trained[key] = (*train_variant(variant, pools[variant.scaling], config), time.monotonic() - started)
        arch, theta, seconds[name] = trained[key]
        if variant.supernet is not None:
            theta = slice_theta(theta, arch, variant.arch)
        meta = MetaModel({variant.arch.name: (variant.arch, theta)})
        records += score_variant(name, variant, meta, splits[variant.scaling], seed)
        if on_variant is not None:
            on_variant(name, seconds[name])
    reference = splits.get("quantile") or {ref.name: table_arrays(ref, seed) for ref in eval_refs}
    return records, reference_scores(reference, seed), seconds


def summarise_ablation(records: list[dict], reference: dict[str, float], seconds: dict[str, float]) -> list[dict]:
    """Mean held-back score per variant and stage, and on how many tables inner+adam20 beats the reference.

    The last row is the reference itself: a random init of the base architecture after 100 Adam steps.
    """
    frame = pd.DataFrame(records)
    out = []
    for name, group in frame.groupby("variant", sort=False):
        means = group.groupby("k", sort=False)["score"].mean()
        tuned = group[group["k"] == "inner+adam20"].set_index("dataset")["score"]
        ref = pd.Series(reference).loc[tuned.index]
        out.append({"variant": name, **{k: float(v) for k, v in means.items()},
                    "wins_vs_random100": int((tuned > ref).sum()), "tables": len(tuned),
                    "train_s": round(seconds.get(name, 0.0), 1)})
    out.append({"variant": f"random{REFERENCE_STEPS}", "start": np.nan, "inner": np.nan,
                "inner+adam20": float(np.mean(list(reference.values()))), "wins_vs_random100": 0,
                "tables": len(reference), "train_s": 0.0})
    return out
