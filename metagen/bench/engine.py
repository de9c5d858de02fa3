"""``metagen bench maml``: meta-training throughput of the batched engine against a per-task loop.

Both compute the same meta-gradient (the tests check it); the table says how many
tasks per second each turns into meta-gradients, side by side in one run.
"""

from __future__ import annotations

import resource
import time

import torch

from metagen.maml import MetaArch, TaskBatch, init_params, meta_loss_loop, meta_loss_vmap, pad_tasks
from metagen.meta_train import PRESETS

ENGINES = {"loop": meta_loss_loop, "vmap": meta_loss_vmap}


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak so far (Linux: KiB)


def time_engine(arch: MetaArch, batch: TaskBatch, engine: str, first_order: bool, repeats: int,
                device: torch.device, compiled: bool = False) -> float:
    """Median seconds per meta-gradient of one meta-batch."""
    theta = {k: v.to(device).requires_grad_() for k, v in init_params(arch).items()}
    fn = ENGINES[engine]
    if compiled:
        fn = torch.compile(fn)
    times = []
    for i in range(repeats + 1):  # the first call warms up (and compiles)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        loss = fn(theta, arch, batch, arch.inner_steps, first_order)
        torch.autograd.grad(loss, list(theta.values()), allow_unused=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


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
                try:
                    seconds = time_engine(arch, batch, engine, first_order, repeats, device, compiled)
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
