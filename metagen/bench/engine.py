"""``metagen bench maml``: meta-training throughput and memory of the MAML engine.

Two tables. The engines: the batched (vmap) engine against a per-task loop; both compute
the same meta-gradient (the tests check it), the table says how many tasks per second each
turns into meta-gradients, side by side in one run. The inner-loop lengths: second-order
MAML, first-order MAML and iMAML at 5 to 500 inner steps, tasks per second and the memory
the meta-gradient's autograd graph holds, which grows with the steps when the loop is
unrolled and stays flat when the gradient is implicit.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable

import torch

from metagen.maml import (
    Implicit,
    MetaArch,
    Params,
    TaskBatch,
    init_params,
    meta_loss_loop,
    meta_loss_vmap,
    pad_tasks,
)
from metagen.meta_train import PRESETS

ENGINES = {"loop": meta_loss_loop, "vmap": meta_loss_vmap}
MetaLoss = Callable[[Params, MetaArch, TaskBatch, int], torch.Tensor]
ALGORITHMS: dict[str, MetaLoss] = {
    "maml": lambda theta, arch, batch, steps: meta_loss_vmap(theta, arch, batch, steps, False),
    "fomaml": lambda theta, arch, batch, steps: meta_loss_vmap(theta, arch, batch, steps, True),
    "imaml": lambda theta, arch, batch, steps: meta_loss_vmap(theta, arch, batch, steps, False, Implicit()),
}
UNROLLED = {"maml", "fomaml"}  # their graph, and so their memory, grows with the inner steps


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak so far (Linux: KiB)


def graph_saved_bytes(loss: torch.Tensor) -> int:
    """Bytes of the tensors the autograd graph behind ``loss`` keeps for its backward pass.

    Walks the graph and sums each saved tensor's storage once. (``saved_tensors_hooks``
    would be the usual tool, but ``torch.func.grad`` refuses to run under them.)
    """
    storages: dict[int, int] = {}
    seen, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for name in dir(node):
            if name.startswith("_saved_"):
                value = getattr(node, name)
                for t in value if isinstance(value, tuple) else (value,):
                    if isinstance(t, torch.Tensor):
                        storage = t.untyped_storage()
                        storages[storage.data_ptr()] = storage.nbytes()
        stack.extend(parent for parent, _ in node.next_functions)
    return sum(storages.values())


def time_meta_gradient(meta_loss: Callable[[Params], torch.Tensor], arch: MetaArch, repeats: int,
                       device: torch.device) -> tuple[float, int]:
    """Median seconds per meta-gradient, and the bytes its graph saves (measured on the untimed warm-up)."""
    theta = {k: v.to(device).requires_grad_() for k, v in init_params(arch).items()}
    times, saved = [], 0
    for i in range(repeats + 1):  # the first call warms up (and compiles)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        loss = meta_loss(theta)
        if not i:
            saved = graph_saved_bytes(loss)
        torch.autograd.grad(loss, list(theta.values()), allow_unused=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], saved


def bench_engines(tasks: list, meta_batch: int, repeats: int, device: torch.device,
                  compile_too: bool = False) -> list[dict]:
    """Rows for the small preset's shapes and for width 256, both orders, loop / vmap (/ compiled vmap)."""
    shapes = {"small preset": PRESETS["small"].members[0], "width 256": MetaArch(depth=2, width=256)}
    classification = [t for t in tasks if t.kind != "regression"][:meta_batch]
    rows = []
    for shape, arch in shapes.items():
        batch = pad_tasks(classification, 0, arch.width).to(device)
        for first_order in (False, True):
            variants = [("loop", False), ("vmap", False)] + ([("vmap", True)] if compile_too else [])
            loop_s = None
            for engine, compiled in variants:
                fn = torch.compile(ENGINES[engine]) if compiled else ENGINES[engine]
                try:
                    seconds, _ = time_meta_gradient(
                        lambda theta: fn(theta, arch, batch, arch.inner_steps, first_order), arch, repeats, device)
                    status = "ok"
                except Exception as exc:  # noqa: BLE001 - a failed compile is a result to report
                    seconds, status = float("nan"), f"error: {type(exc).__name__}"
                loop_s = seconds if engine == "loop" else loop_s
                rows.append({
                    "shape": shape, "engine": engine + ("+compile" if compiled else ""),
                    "order": "first" if first_order else "second", "device": device.type,
                    "meta_batch": len(classification), "tasks_per_s": len(classification) / seconds,
                    "speedup": (loop_s / seconds) if loop_s else float("nan"),
                    "peak_mem_mb": _peak_mb(device), "status": status,
                })
    return rows


def bench_inner_steps(tasks: list, meta_batch: int, repeats: int, device: torch.device,
                      steps: tuple[int, ...] = (5, 20, 100, 500), max_unrolled_steps: int = 500) -> list[dict]:
    """Rows per algorithm and inner-loop length on the small preset's shapes (vmap engine).

    Unrolled MAML beyond ``max_unrolled_steps`` is skipped, not run: its graph grows with
    every step (the rows below the cap show by how much).
    """
    arch = PRESETS["small"].members[0]
    classification = [t for t in tasks if t.kind != "regression"][:meta_batch]
    batch = pad_tasks(classification, 0, arch.width).to(device)
    rows = []
    for n_steps in sorted(steps):
        for name, meta_loss in ALGORITHMS.items():
            row = {"algorithm": name, "inner_steps": n_steps, "device": device.type,
                   "meta_batch": len(classification)}
            if name in UNROLLED and n_steps > max_unrolled_steps:
                rows.append(row | {"tasks_per_s": float("nan"), "graph_mb": float("nan"), "peak_mem_mb": float("nan"),
                                   "status": f"skipped: unrolled past --max-unrolled-steps {max_unrolled_steps}"})
                continue
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds, saved = time_meta_gradient(
                lambda theta: meta_loss(theta, arch, batch, n_steps), arch, repeats, device)
            rows.append(row | {"tasks_per_s": len(classification) / seconds, "graph_mb": saved / 2**20,
                               "peak_mem_mb": _peak_mb(device), "status": "ok"})
    return rows
