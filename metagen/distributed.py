"""Several processes, one run: ``torchrun --nproc-per-node N -m metagen meta-train ...``.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT. ``processes`` opens the
process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA) and does nothing otherwise,
and every helper here is then a no-op, so one process runs the code path it always ran.

The functional engine's gradients are ``torch.func`` transforms of plain tensors, not a
module's, so DistributedDataParallel's hooks never fire for them: ``sum_over_processes``
combines them by hand, one ``all_reduce`` for all of them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from metagen.errors import ConfigError

T = TypeVar("T")


def launched() -> bool:
    """Whether torchrun (or anything that sets WORLD_SIZE) started several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def run_then_exit(command: Callable[[], object]) -> None:
    """Run ``command``; under torchrun, then end the process at once, skipping the interpreter's teardown.

    Why: a gloo worker thread can still hold the last reference to a tensor of the last
    collective when the interpreter tears down; freeing it then needs the GIL, and the process
    aborts with "terminate called without an active exception" (pytorch/pytorch#190489; the
    fix proposed upstream, PR 179291, was abandoned). By then every file is written and closed,
    so only the streams need flushing. ``command`` may end in ``SystemExit`` (a Typer app
    always does): its code is the process's. Other exceptions propagate as they would.
    """
    if not launched():
        command()
        return
    code = 0
    try:
        command()
    except SystemExit as stop:
        if stop.code is not None and not isinstance(stop.code, int):
            print(stop.code, file=sys.stderr)
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """The one process that prints, writes checkpoints and writes the result."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """Under torchrun each process drives the GPU of its local rank."""
    if device.type != "cuda" or device.index is not None or not launched():
        return device
    local, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if local >= gpus:
        raise ConfigError(f"torchrun started process {local} on this machine, which has {gpus} GPU(s).",
                          f"Pass --nproc-per-node {gpus} (one process per GPU), or --device cpu.")
    return torch.device("cuda", local)


@contextlib.contextmanager
def processes(device: torch.device, timeout: timedelta = timedelta(minutes=30)) -> Iterator[None]:
    """The process group for the duration of a run, when torchrun started one; else nothing.

    ``timeout`` bounds every collective: how long a process waits for the slowest one.
    """
    if not launched() or dist.is_initialized():
        yield
        return
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    try:
        yield
    finally:
        dist.destroy_process_group()


def share(n: int) -> tuple[slice, float]:
    """This process's contiguous share of ``n`` items and its weight (share / n) in their mean.

    A process left without items (fewer items than processes) takes the first one at
    weight 0, so every process runs the same computation and has the same gradients.
    """
    size, me = world_size(), rank()
    lo, hi = me * n // size, (me + 1) * n // size
    return (slice(lo, hi), (hi - lo) / n) if hi > lo else (slice(0, 1), 0.0)


def sum_over_processes(tensors: list[torch.Tensor]) -> None:
    """Replace each tensor, in place, by its sum over all processes (one ``all_reduce``)."""
    if world_size() == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def from_main(value: T) -> T:
    """The main process's ``value`` on every process (pickled over the process group)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def spread(make: Callable[[int], T], n: int) -> list[T]:
    """``[make(0), ..., make(n - 1)]`` on every process, each process making every world-size-th item.

    ``make`` must depend only on its index (as ``TaskSampler.sample`` does).
    """
    size = world_size()
    mine = [make(i) for i in range(rank(), n, size)]
    if size == 1:
        return mine
    parts: list[list[T]] = [[] for _ in range(size)]
    dist.all_gather_object(parts, mine)
    return [parts[i % size][i // size] for i in range(n)]


def barrier() -> None:
    """Wait until every process gets here."""
    if world_size() > 1:
        dist.barrier()
