"""``metagen worker``, and the local workers ``metagen fit --workers N`` starts beside itself."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import typer
from metagen_cli._common import INTERRUPTED, err, out, user_errors

# Seconds the coordinator waits for its local workers after its own search, before it stops them.
WORKER_EXIT_WAIT = 60.0


def worker_command(
    data: Path = typer.Argument(..., help="The same data file the coordinating `metagen fit` reads (checked)."),
    storage: str = typer.Option(..., "--storage", help="The fit's storage: postgresql://..., sqlite:///f.db or journal:///f.log."),
    study: str = typer.Option(..., "--study", help="The fit's study name (`metagen fit ... --study NAME`)."),
    artifacts: Optional[Path] = typer.Option(None, "--artifacts", help="The fit's artefact folder as this machine mounts it. Default: the path the fit recorded."),
    wait: float = typer.Option(120.0, "--wait", help="Seconds to wait for the fit to create the study."),
) -> None:
    """Run trials of a study that `metagen fit` coordinates, until its deadline or trial count.

    The table's target and every search option come from the study; the coordinator blends the trials
    of every worker into its model.
    """
    from metagen.workers import run_worker

    with user_errors():
        result = run_worker(data, storage, study, artifacts=None if artifacts is None else str(artifacts), wait=wait)
    out.print(f"worker: {result.n_complete} trials completed in study '{result.study_name}' "
              f"(study's best score {result.best_score:.4f})")


def one_thread() -> None:
    """Several worker processes on one machine: each keeps to one thread, or they slow each other down."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)


@contextlib.contextmanager
def local_workers(n: int, data: Path, storage: str, study: str) -> Iterator[None]:
    """``n`` `metagen worker` processes on this machine for the block, each on one thread; this process keeps to one
    thread too. They stop at the study's deadline; a worker that failed is reported by its last line."""
    if n < 1:
        yield
        return
    one_thread()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "OMP_WAIT_POLICY": "PASSIVE"}
    with tempfile.TemporaryDirectory() as logs:
        procs = []
        for i in range(n):
            log = open(Path(logs) / f"worker-{i}.log", "w+")
            procs.append((subprocess.Popen([sys.executable, "-m", "metagen_cli.app", "worker", str(data), "--storage",
                                            storage, "--study", study], stdout=subprocess.DEVNULL, stderr=log, env=env),
                          log))
        try:
            yield
            for proc, _ in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=WORKER_EXIT_WAIT)
        finally:
            for proc, log in procs:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait()
                elif proc.returncode not in (0, INTERRUPTED):
                    log.seek(0)
                    last = (log.read().strip().splitlines() or ["(no output)"])[-1]
                    err.print(f"[yellow]warning:[/] local worker {proc.pid} exited with {proc.returncode}: {last}",
                              highlight=False)
                log.close()
