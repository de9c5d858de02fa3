"""Adapting a network for a number of gradient steps, scored on validation rows as it goes.

The search calls this once per trial; ``on_eval`` lets it prune a trial on its
intermediate scores, and ``deadline`` makes the user's time budget a hard limit.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from metagen.config import NetConfig, lr_at
from metagen.metrics import selection_score
from metagen.network import MLP

# Validation scores are taken on a grid of steps shared by all trials, so the
# pruner compares trials at the same point of training.
EVAL_GRID = 25
N_EVALS = 16
SCALE_LR_MULT = 6.0


@dataclass
class TrainResult:
    model: MLP
    score: float
    """Best validation score seen; the model holds the weights from that point."""
    best_step: int
    history: list[tuple[int, float]] = field(default_factory=list)
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
    X_tr: np.ndarray,
    y_tr: np.ndarray,
    X_va: np.ndarray | None,
    y_va: np.ndarray | None,
    task: str,
    n_out: int,
    config: NetConfig,
    *,
    seed: int = 0,
    deadline: float | None = None,
    on_eval: Callable[[int, float], None] | None = None,
    init: MLP | None = None,
) -> TrainResult:
    """Train from ``init`` (a learned starting point) or a seeded random start.

    With validation rows, keep the weights of the best validation score; without,
    return the weights after the last step. ``y_va`` for regression is in the same
    (standardised) units as ``y_tr``.
    """
    torch.manual_seed(seed)  # the random start and the dropout masks both follow the seed
    if init is not None:
        model = copy.deepcopy(init)
    else:
        model = MLP(X_tr.shape[1], n_out, config)
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
    Xt = torch.from_numpy(X_tr)
    yt = torch.from_numpy(y_tr.astype(np.int64 if task != "regression" else np.float32))
    n = len(Xt)
    batch = min(config.batch_size, n)
    eval_every = EVAL_GRID * max(1, round(config.steps / N_EVALS / EVAL_GRID))
    best = TrainResult(copy.deepcopy(model), -np.inf, 0)
    history: list[tuple[int, float]] = []
    perm = torch.randperm(n, generator=gen)
    cursor = 0
    hit_deadline = False
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
        hit_deadline = deadline is not None and time.monotonic() > deadline
        if X_va is not None and (step % eval_every == 0 or step == config.steps or hit_deadline):
            score = selection_score(task, y_va, predict_array(model, X_va, task))
            score = score if np.isfinite(score) else -np.inf
            history.append((step, score))
            if score > best.score:
                best = TrainResult(copy.deepcopy(model), score, step)
            if on_eval is not None:
                on_eval(step, score)
        if hit_deadline:
            break
    if config.steps == 0 or X_va is None:
        score = -np.inf if X_va is None else selection_score(task, y_va, predict_array(model, X_va, task))
        best = TrainResult(model, score if np.isfinite(score) else -np.inf, config.steps)
    best.history, best.hit_deadline = history, hit_deadline
    best.model.eval()
    return best
