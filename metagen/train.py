"""Adapting a network for a number of gradient steps, watched on rows it does not train on.

The search calls this once per trial fold. A ``Watch`` scores the network on the
fold's validation rows at given steps (the rungs of successive halving) and reports
each score, so a trial that trails is stopped after a few dozen steps; the weights
returned are always those after the last step, never selected on the watched rows.
``deadline`` makes the user's time budget a hard limit.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from metagen.config import NetConfig, lr_at
from metagen.metrics import selection_score
from metagen.network import MLP

SCALE_LR_MULT = 6.0


@dataclass(frozen=True)
class Watch:
    """Rows to score the network on at ``steps``; ``report(step, score)`` may raise to stop the training."""

    X: np.ndarray
    y: np.ndarray
    steps: tuple[int, ...]
    report: Callable[[int, float], None]


@dataclass
class TrainResult:
    model: MLP
    steps: int
    """Steps taken: the configuration's, or fewer when the deadline came first."""
    hit_deadline: bool = False


def predict_array(model: MLP, X: np.ndarray, task: str, batch: int = 8192) -> np.ndarray:
    """Probabilities (classification) or standardised values (regression)."""
    model.eval()
    dtype = next(model.parameters()).dtype
    outs = []
    with torch.no_grad():
        for i in range(0, len(X), batch):
            out = model(torch.from_numpy(X[i : i + batch]).to(dtype))
            outs.append(out.softmax(-1) if task != "regression" else out[:, 0])
    pred = torch.cat(outs).numpy().astype(np.float64)
    # Renormalise in float64 so probabilities sum to one exactly (log loss checks it).
    return pred if task == "regression" else pred / pred.sum(axis=1, keepdims=True)


def train_network(
    X: np.ndarray,
    y: np.ndarray,
    task: str,
    n_out: int,
    config: NetConfig,
    *,
    seed: int = 0,
    deadline: float | None = None,
    init: MLP | None = None,
    watch: Watch | None = None,
) -> TrainResult:
    """Train for ``config.steps`` from ``init`` (a learned starting point) or a seeded random start.

    ``y`` for regression is standardised; ``watch`` rows are in the same units.
    """
    torch.manual_seed(seed)  # the random start and the dropout masks both follow the seed
    if init is not None:
        model = copy.deepcopy(init)
    else:
        model = MLP(X.shape[1], n_out, config)
        if task == "regression":
            torch.nn.init.zeros_(model.head.weight)
            torch.nn.init.zeros_(model.head.bias)
    gen = torch.Generator().manual_seed(seed)
    scale_params = [model.scale] if model.scale is not None else []
    other = [p for n, p in model.named_parameters() if n != "scale"]
    groups = [{"params": other, "lr_mult": 1.0}]
    if scale_params:
        groups.append({"params": scale_params, "lr_mult": SCALE_LR_MULT, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    Xt = torch.from_numpy(X)
    yt = torch.from_numpy(y.astype(np.int64 if task != "regression" else np.float32))
    n = len(Xt)
    batch = min(config.batch_size, n)
    watched = set(watch.steps) if watch is not None else set()
    perm = torch.randperm(n, generator=gen)
    cursor = 0
    step, hit_deadline = 0, False
    for step in range(1, config.steps + 1):
        if cursor + batch > n:
            perm, cursor = torch.randperm(n, generator=gen), 0
        idx = perm[cursor : cursor + batch]
        cursor += batch
        lr = lr_at(config, step - 1)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_mult"]
        model.train()
        out = model(Xt[idx])
        if task == "regression":
            loss = F.mse_loss(out[:, 0], yt[idx])
        else:
            loss = F.cross_entropy(out, yt[idx], label_smoothing=config.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step in watched:
            score = selection_score(task, watch.y, predict_array(model, watch.X, task))
            watch.report(step, float(score) if np.isfinite(score) else -np.inf)
        hit_deadline = deadline is not None and time.monotonic() > deadline
        if hit_deadline:
            break
    model.eval()
    return TrainResult(model, step, hit_deadline)
