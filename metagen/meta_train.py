"""The ``meta-train`` flow: task corpus -> batched MAML -> meta-model file.

Tasks of one kind are padded into meta-batches; the engine (``vmap`` or the
per-task ``loop``) gives the meta-gradient; Adam updates the meta-parameters.
Checkpoints hold the meta-parameters, Adam's state and the step, so a run resumes
exactly. Every ``eval_every`` steps the query loss after a few inner steps on fixed
validation tasks (the dev-eval split, never trained on) draws the meta-validation curve.

Under torchrun (``metagen.distributed``) every process draws the same meta-batch and
takes its share of the tasks; the shares' gradients are summed, weighted by task counts,
into the whole batch's, so every process clips and steps identically. The first process
alone reads and writes checkpoints; one process is the plain single-process run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from metagen import distributed
from metagen.errors import ConfigError
from metagen.maml import (
    Algorithm,
    Implicit,
    MetaArch,
    Params,
    TaskBatch,
    init_params,
    meta_loss_loop,
    meta_loss_vmap,
    pad_tasks,
    reptile_grad,
    slice_theta,
)

Engine = Literal["vmap", "loop"]
Amp = Literal["auto", "bf16", "off"]
MAX_GRAD_NORM = 1.0  # a few hard tasks otherwise throw the meta-parameters off (seen as loss spikes)


@dataclass(frozen=True)
class MetaTrainConfig:
    """How the meta-parameters are trained."""

    steps: int = 400
    """Outer (meta) steps."""
    meta_batch: int = 16
    """Tasks per meta-step, all of one kind (classification or regression)."""
    inner_steps: int = 5
    algorithm: Algorithm = "fomaml"
    """``maml`` (second order), ``fomaml`` (first order), ``imaml`` (implicit: for long inner loops; the
    learned inner rates stay fixed) or ``reptile``."""
    engine: Engine = "vmap"
    outer_lr: float = 1e-3
    eval_every: int = 50
    seed: int = 0
    pool: int = 2000
    """Tasks drawn once and reused; drawing is slower than a meta-step on small machines."""
    amp: Amp = "auto"
    """Mixed precision: ``auto`` is bfloat16 autocast on CUDA and full precision on CPU."""
    imaml_reg: float = 1.0
    """iMAML's lambda, the pull of the adapted weights back to the start."""
    imaml_cg_iters: int = 8
    """iMAML's conjugate-gradient iterations per meta-gradient."""

    def __post_init__(self) -> None:
        if self.algorithm not in get_args(Algorithm) or self.engine not in get_args(Engine):
            raise ConfigError(f"Unknown algorithm {self.algorithm!r} or engine {self.engine!r}.",
                              "Use maml, fomaml, imaml or reptile, and vmap or loop.")
        if self.amp not in get_args(Amp):
            raise ConfigError(f"Unknown mixed-precision mode {self.amp!r}.", "Use auto, bf16 or off.")
        if not (self.imaml_reg > 0 and self.imaml_cg_iters >= 1):
            raise ConfigError(f"iMAML needs imaml_reg > 0 and imaml_cg_iters >= 1, not {self.imaml_reg} and "
                              f"{self.imaml_cg_iters}.", "Try imaml_reg=1.0 and imaml_cg_iters=8.")

    def autocast(self, device: torch.device) -> torch.autocast:
        """bfloat16 needs no loss scaling; the solves and eigendecompositions run in float32 anyway."""
        enabled = self.amp == "bf16" or (self.amp == "auto" and device.type == "cuda")
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@dataclass
class MetaTrainState:
    theta: Params
    opt: torch.optim.Adam
    step: int = 0
    curve: list[dict] = field(default_factory=list)
    tasks_trained: int = 0
    """Tasks of the meta-batches this run trained on (all processes together; not checkpointed)."""


def pick_device(device: str = "auto") -> torch.device:
    """The device asked for; under torchrun ``cuda`` (or ``auto`` with a GPU) is the local rank's GPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible.", "Use --device cpu or auto.")
    return distributed.local_device(torch.device(device))


def meta_batches(tasks: list, meta_batch: int, width: int, seed: int) -> Iterator[TaskBatch]:
    """Endless meta-batches of one kind each, alternating kinds in proportion to the pool."""
    rng = np.random.default_rng(seed)
    by_kind = {
        True: [t for t in tasks if t.kind == "regression"],
        False: [t for t in tasks if t.kind != "regression"],
    }
    kinds = [k for k, v in by_kind.items() if v]
    share = len(by_kind[True]) / max(1, len(tasks))
    i = 0
    while True:
        regression = bool(rng.random() < share) if len(kinds) == 2 else kinds[0]
        pool = by_kind[regression]
        chosen = [pool[j] for j in rng.choice(len(pool), min(meta_batch, len(pool)), replace=False)]
        yield pad_tasks(chosen, seed * 1_000_003 + i, width)
        i += 1


def meta_gradient(theta: Params, arch: MetaArch, batch: TaskBatch, config: MetaTrainConfig,
                  slice_arch: MetaArch | None = None) -> float:
    """Fill ``.grad`` of the meta-parameters; return the meta-loss.

    With ``slice_arch`` the loss is that slice's (``arch`` is then the supernet) and its
    gradient lands in the supernet's parameters.
    """
    if config.algorithm == "reptile":
        pseudo = reptile_grad(theta, arch, batch, config.inner_steps)
        for k, v in theta.items():
            v.grad = pseudo.get(k, torch.zeros_like(v))
        return float("nan")
    loss_fn = meta_loss_vmap if config.engine == "vmap" else meta_loss_loop
    implicit = Implicit(config.imaml_reg, config.imaml_cg_iters) if config.algorithm == "imaml" else None
    params = theta
    if slice_arch is not None:
        params, arch = slice_theta(theta, arch, slice_arch), slice_arch
        batch = replace(batch, noise=batch.noise[..., : slice_arch.width])
    with config.autocast(batch.xs.device):
        loss = loss_fn(params, arch, batch, config.inner_steps, config.algorithm == "fomaml", implicit)
    loss.backward()
    return float(loss.detach())


def shared_meta_gradient(theta: Params, arch: MetaArch, batch: TaskBatch, config: MetaTrainConfig,
                         slice_arch: MetaArch | None = None) -> float:
    """``meta_gradient`` of the whole batch, each process computing it on its share of the tasks.

    Each share's gradient is of its mean loss; weighted by the share's task count and summed
    over processes, it is the whole batch's mean. One process: the batch itself, weight 1.
    """
    part, weight = distributed.share(batch.xs.shape[0])
    loss = meta_gradient(theta, arch, batch.tasks(part), config, slice_arch)
    grads = [v.grad for v in theta.values() if v.grad is not None]
    for g in grads:
        g.mul_(weight)
    total = torch.tensor([loss * weight], device=batch.xs.device)
    distributed.sum_over_processes([*grads, total])
    return float(total)


def shared_validation_loss(theta: Params, arch: MetaArch, batches: list[TaskBatch], steps: int) -> float:
    """``validation_loss`` with the validation tasks split over the processes."""
    part, weight = distributed.share(len(batches))
    total = torch.tensor([validation_loss(theta, arch, batches[part], steps) * weight],
                         device=batches[0].xs.device)
    distributed.sum_over_processes([total])
    return float(total)


@torch.no_grad()
def validation_loss(theta: Params, arch: MetaArch, batches: list[TaskBatch], steps: int) -> float:
    """Mean query loss after ``steps`` inner steps (first-order, no meta-gradient needed)."""
    with torch.enable_grad():  # the inner steps take gradients
        losses = [float(meta_loss_vmap(theta, arch, b, steps, True).detach()) for b in batches]
    return float(np.mean(losses)) if losses else float("nan")


def new_state(arch: MetaArch, config: MetaTrainConfig, device: torch.device) -> MetaTrainState:
    theta = {k: v.to(device).requires_grad_() for k, v in init_params(arch, config.seed).items()}
    return MetaTrainState(theta, torch.optim.Adam(theta.values(), lr=config.outer_lr))


def _state_tensors(state: MetaTrainState) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A state as CPU tensors and string metadata: what a checkpoint holds and the first process sends."""
    tensors = {f"theta/{k}": v.detach().cpu() for k, v in state.theta.items()}
    for k, v in state.theta.items():
        for key, value in state.opt.state.get(v, {}).items():
            tensors[f"adam/{key}/{k}"] = torch.as_tensor(value).detach().cpu().reshape(v.shape if key != "step" else 1)
    return tensors, {"step": str(state.step), "curve": json.dumps(state.curve)}


def save_checkpoint(state: MetaTrainState, path: Path) -> None:
    tensors, meta = _state_tensors(state)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def load_checkpoint(path: Path, arch: MetaArch, config: MetaTrainConfig, device: torch.device) -> MetaTrainState:
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    return _state_from_tensors(tensors, meta, arch, config, device)


def _state_from_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, str], arch: MetaArch,
                        config: MetaTrainConfig, device: torch.device) -> MetaTrainState:
    state = new_state(arch, config, device)
    with torch.no_grad():
        for k, v in state.theta.items():
            v.copy_(tensors[f"theta/{k}"])
    for k, v in state.theta.items():
        if f"adam/exp_avg/{k}" in tensors:
            state.opt.state[v] = {
                "step": tensors[f"adam/step/{k}"].reshape(()).clone(),
                "exp_avg": tensors[f"adam/exp_avg/{k}"].to(device),
                "exp_avg_sq": tensors[f"adam/exp_avg_sq/{k}"].to(device),
            }
    state.step = int(meta.get("step", 0))
    state.curve = json.loads(meta.get("curve", "[]"))
    return state


def starting_state(arch: MetaArch, config: MetaTrainConfig, device: torch.device,
                   checkpoint: Path | None) -> MetaTrainState:
    """A new state, or the checkpoint's if it exists; the first process's, on every process.

    Only the first process reads the checkpoint, so the others need not see its file.
    """
    state = None
    if distributed.is_main():
        fresh = checkpoint is None or not checkpoint.exists()
        state = new_state(arch, config, device) if fresh else load_checkpoint(checkpoint, arch, config, device)
    if distributed.world_size() == 1:
        return state
    tensors, meta = distributed.from_main(None if state is None else _state_tensors(state))
    return _state_from_tensors(tensors, meta, arch, config, device)


def meta_train(
    arch: MetaArch,
    tasks: list,
    config: MetaTrainConfig,
    *,
    val_tasks: list = (),
    device: torch.device = torch.device("cpu"),
    checkpoint: Path | None = None,
    on_step: Callable[[int, float, dict | None], None] | None = None,
    slices: tuple[MetaArch, ...] = (),
) -> MetaTrainState:
    """Train one architecture's meta-parameters on a pool of tasks; resume from ``checkpoint`` if it exists.

    Under torchrun every process passes the same tasks and gets the same state back; only
    the first one writes ``checkpoint``. With ``slices``, ``arch`` is a supernet and each
    step trains the next slice in turn.
    """
    if slices and config.algorithm == "reptile":
        raise ConfigError("Supernet slices need a meta-gradient.", "Use maml or fomaml with slices.")
    state = starting_state(arch, config, device, checkpoint)
    batches = meta_batches(tasks, config.meta_batch, arch.width, config.seed)
    for _ in range(state.step):  # the stream of batches continues where the checkpoint left it
        next(batches)
    val = [pad_tasks([t], 10_000 + i, arch.width).to(device) for i, t in enumerate(val_tasks)]
    while state.step < config.steps:
        batch = next(batches).to(device)
        state.opt.zero_grad(set_to_none=True)
        slice_arch = slices[state.step % len(slices)] if slices else None
        loss = shared_meta_gradient(state.theta, arch, batch, config, slice_arch)
        torch.nn.utils.clip_grad_norm_(list(state.theta.values()), MAX_GRAD_NORM)
        state.opt.step()
        state.step += 1
        state.tasks_trained += batch.xs.shape[0]
        point = None
        if val and (state.step % config.eval_every == 0 or state.step == config.steps):
            point = {"step": state.step, "val_loss": shared_validation_loss(state.theta, arch, val, arch.inner_steps)}
            state.curve.append(point)
        if checkpoint is not None and distributed.is_main() and (point is not None or state.step == config.steps):
            save_checkpoint(state, checkpoint)
        if on_step is not None:
            on_step(state.step, loss, point)
    return state


@dataclass(frozen=True)
class Preset:
    """A whole meta-training run: the architecture family and how long each member trains."""

    members: tuple[MetaArch, ...]
    train: MetaTrainConfig
    n_support: int = 128
    n_query: int = 128
    max_columns: int = 32
    real_share: float = 0.7
    n_val_tasks: int = 32


PRESETS = {
    # Minutes on 2 CPU cores: for tests and for trying the pipeline.
    "small": Preset((MetaArch(depth=1, width=32),), MetaTrainConfig(steps=40, meta_batch=8, pool=120, eval_every=20),
                    n_val_tasks=8),
    # What the shipped meta-model is trained with: the PCA front and FiLM won `metagen bench ablate`.
    "full": Preset((MetaArch(depth=2, width=128, front="pca", film=True),
                    MetaArch(depth=3, width=256, front="pca", film=True)),
                   MetaTrainConfig(steps=800, meta_batch=16, pool=1500, eval_every=50)),
    # The full preset's first member as a distribution over starts (``metagen bench posterior`` measures it).
    "posterior": Preset((MetaArch(depth=2, width=128, front="pca", film=True, posterior=True),),
                        MetaTrainConfig(steps=800, meta_batch=16, pool=1500, eval_every=50)),
}


def build_meta_model(
    tables: list,
    preset: Preset,
    *,
    device: torch.device,
    seed: int = 0,
    checkpoint_dir: Path | None = None,
    on_step: Callable[[str, int, float, dict | None], None] | None = None,
):
    """Meta-train every member of the preset on tasks from ``tables`` (dev-eval ones only validate)."""
    from metagen.meta_model import MetaModel
    from task_corpus import SamplerConfig, TaskSampler

    started = time.monotonic()
    sampler_config = SamplerConfig(n_support=preset.n_support, n_query=preset.n_query,
                                   max_columns=preset.max_columns, real_share=preset.real_share)
    sampler = TaskSampler(tables, sampler_config, seed=seed)
    pool = distributed.spread(sampler.sample, preset.train.pool)  # drawing is slow: each process draws a share
    val_refs = [r for r in tables if r.split == "dev-eval"]
    val_tasks = []
    if val_refs:
        val_sampler = TaskSampler(val_refs, replace(sampler_config, real_share=1.0), seed=seed + 1,
                                  exclude_split=None)
        val_tasks = distributed.spread(val_sampler.sample, preset.n_val_tasks)
    members, curves = {}, {}
    tasks_trained, train_seconds = 0, 0.0
    for arch in preset.members:
        config = replace(preset.train, seed=seed, inner_steps=arch.inner_steps)
        checkpoint = None if checkpoint_dir is None else checkpoint_dir / f"{arch.name}.ckpt.safetensors"
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
        member_started = time.monotonic()
        state = meta_train(
            arch, pool, config, val_tasks=val_tasks, device=device, checkpoint=checkpoint,
            on_step=None if on_step is None else (lambda s, l, p, name=arch.name: on_step(name, s, l, p)),
        )
        train_seconds += time.monotonic() - member_started
        tasks_trained += state.tasks_trained
        members[arch.name] = (arch, {k: v.detach().cpu() for k, v in state.theta.items()})
        curves[arch.name] = state.curve
    spec = {
        "train_config": asdict(preset.train),
        "sampler": asdict(sampler_config),
        "n_tables": len(sampler.tables),
        "n_excluded_tables": len(sampler.excluded),
        "n_tasks": len(pool),
        "validation_curve": curves,
        "device": str(device),
        "processes": distributed.world_size(),
        "meta_tasks_per_second": round(tasks_trained / train_seconds, 2) if tasks_trained else None,
        "seconds": round(time.monotonic() - started, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return MetaModel(members, spec)
