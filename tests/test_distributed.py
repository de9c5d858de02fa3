"""Distributed meta-training: two real torchrun processes (gloo, CPU) give the one-process result.

The module is also torchrun's worker script: ``python -m torch.distributed.run
--nproc-per-node 2 tests/test_distributed.py OUT`` runs ``_worker``, which writes each
process's gradients and parameters under OUT; the tests compare them with the same
computation done here, in one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from metagen import distributed
from metagen.errors import ConfigError
from metagen.maml import MetaArch
from metagen.meta_train import MetaTrainConfig, meta_batches, meta_gradient, meta_train, new_state, shared_meta_gradient
from task_corpus import SamplerConfig, TaskSampler

ARCH = MetaArch(depth=1, width=16, gen_width=8, inner_steps=2)
CONFIG = MetaTrainConfig(steps=3, meta_batch=5, inner_steps=2, eval_every=2)  # 5 tasks: shares of 2 and 3
ALGORITHMS = ("fomaml", "maml", "reptile")
BATCH_SIZES = (5, 1)  # one task: the first process has none and joins at weight 0


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    """Two CPU processes under torchrun (gloo), on a free local port."""
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          *args], capture_output=True, text=True, timeout=180,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return run


def _tasks() -> tuple[list, list]:
    """Synthetic training and validation tasks, the same in every process."""
    sampler = TaskSampler([], SamplerConfig(n_support=16, n_query=16, max_columns=5, real_share=0.0), seed=11)
    tasks = [sampler.sample(i) for i in range(30)]
    return tasks[:27], tasks[27:]


def _gradient(algorithm: str, size: int, gradient_fn) -> dict[str, torch.Tensor]:
    """One meta-gradient from the initial parameters on the first batch of ``size`` tasks."""
    config = replace(CONFIG, algorithm=algorithm, meta_batch=size)
    theta = new_state(ARCH, config, torch.device("cpu")).theta
    gradient_fn(theta, ARCH, next(meta_batches(_tasks()[0], size, ARCH.width, config.seed)), config)
    return {k: v.grad for k, v in theta.items() if v.grad is not None}


def _theta(state) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in state.theta.items()}


def _worker(out: Path) -> None:
    torch.set_num_threads(1)
    with distributed.processes(torch.device("cpu")):
        rank = distributed.rank()
        (out / f"spread-{rank}.json").write_text(json.dumps(distributed.spread(lambda i: [i, rank], 5)))
        for algorithm in ALGORITHMS:
            for size in BATCH_SIZES:
                save_file(_gradient(algorithm, size, shared_meta_gradient), out / f"grad-{algorithm}-{size}-{rank}.st")
        tasks, val = _tasks()
        checkpoint = out / f"ckpt-{rank}.st"  # a path per process: the second one must write nothing
        first = meta_train(ARCH, tasks, CONFIG, val_tasks=val, checkpoint=checkpoint)
        save_file(_theta(first), out / f"theta-{rank}.st", metadata={"curve": json.dumps(first.curve)})
        resumed = meta_train(ARCH, tasks, replace(CONFIG, steps=5), val_tasks=val, checkpoint=checkpoint)
        save_file(_theta(resumed), out / f"resumed-{rank}.st")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("two-processes")
    _torchrun(__file__, str(out))
    return out


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float = 1e-4, atol: float = 1e-7) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=rtol, atol=atol), (k, (a[k] - b[k]).abs().max())


@pytest.mark.slow
@pytest.mark.parametrize("size", BATCH_SIZES)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_two_process_meta_gradient_equals_the_one_process_one(two_processes: Path, algorithm: str, size: int):
    one = _gradient(algorithm, size, meta_gradient)
    for rank in (0, 1):
        _close(load_file(two_processes / f"grad-{algorithm}-{size}-{rank}.st"), one)


@pytest.mark.slow
def test_spread_items_are_made_once_each_and_reach_every_process(two_processes: Path):
    made = [json.loads((two_processes / f"spread-{rank}.json").read_text()) for rank in (0, 1)]
    assert made[0] == made[1] == [[i, i % 2] for i in range(5)]


@pytest.mark.slow
def test_processes_end_identical_and_only_the_first_writes_checkpoints(two_processes: Path):
    for name in ("theta", "resumed"):
        first, second = (load_file(two_processes / f"{name}-{rank}.st") for rank in (0, 1))
        _close(first, second, rtol=0, atol=0)
    assert (two_processes / "ckpt-0.st").exists() and not (two_processes / "ckpt-1.st").exists()
    assert not list(two_processes.glob(".*tmp"))


@pytest.mark.slow
def test_two_process_training_and_resume_equal_one_process(two_processes: Path):
    tasks, val = _tasks()
    one = meta_train(ARCH, tasks, CONFIG, val_tasks=val)
    _close(load_file(two_processes / "theta-0.st"), _theta(one), rtol=1e-4, atol=1e-6)
    with safe_open(str(two_processes / "theta-0.st"), framework="pt") as fh:
        curve = json.loads(fh.metadata()["curve"])
    assert [p["step"] for p in curve] == [p["step"] for p in one.curve] == [2, 3]
    assert [p["val_loss"] for p in curve] == pytest.approx([p["val_loss"] for p in one.curve], rel=1e-5)
    longer = meta_train(ARCH, tasks, replace(CONFIG, steps=5), val_tasks=val)
    _close(load_file(two_processes / "resumed-0.st"), _theta(longer), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_meta_train_command_under_torchrun_writes_the_one_process_meta_model(tmp_path: Path):
    from metagen.meta_model import load_meta_model
    from metagen_cli.app import app

    args = ["meta-train", "-c", "sklearn", "--preset", "small", "--steps", "2", "--amp", "off"]
    run = _torchrun("-m", "metagen", *args, "-o", str(tmp_path / "two.safetensors"),
                    "--checkpoint-dir", str(tmp_path / "ckpt"))
    assert run.stderr.count("wrote ") == 1 and "2 processes" in run.stderr
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["d1w32.ckpt.safetensors"]
    single = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "one.safetensors")])
    assert single.exit_code == 0, single.output
    two, one = load_meta_model(tmp_path / "two.safetensors"), load_meta_model(tmp_path / "one.safetensors")
    assert two.spec["processes"] == 2 and one.spec["processes"] == 1
    _close(two.members["d1w32"][1], one.members["d1w32"][1], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_meta_portfolio_under_torchrun_shards_by_rank_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from metagen.maml import init_params
    from metagen.meta_model import MetaModel, load_meta_model, save_meta_model
    from metagen.performance_table import read_cells
    from metagen_cli.app import app

    monkeypatch.setenv("METAGEN_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for k in range(5):
        X = np.random.default_rng(k).normal(size=(120, 3))
        pd.DataFrame(X, columns=list("abc")).assign(target=(X[:, 0] + X[:, k % 3] > 0).astype(int)).to_csv(
            corpus / f"table{k}.tsv.gz", sep="\t", index=False)
    arch = MetaArch(depth=1, width=16, gen_width=8, front="pca", film=True)
    meta = save_meta_model(MetaModel({arch.name: (arch, init_params(arch))}), tmp_path / "meta.safetensors")
    cells = tmp_path / "cells"
    args = ["meta-portfolio", "-c", str(corpus), "--meta-model", str(meta), "--cells", str(cells),
            "--families", "linear,forest", "--per-family", "3", "--per-table", "4", "--max-rows", "100"]
    by_hand = CliRunner().invoke(app, [*args, "--shard", "1/2"])  # a worker started by hand did shard 1 already
    assert by_hand.exit_code == 0, by_hand.output
    shard_1 = (cells / "cells-1.csv").read_text()
    run = _torchrun("-m", "metagen", *args)
    assert run.stderr.count("proposer wins") == 1 and "worker 1 of 2 done" in run.stderr
    assert (cells / "cells-1.csv").read_text() == shard_1  # rank 1 resumed it: nothing left to run
    files = sorted(cells.glob("cells-*.csv"))
    assert [p.name for p in files] == ["cells-0.csv", "cells-1.csv"]
    by_worker = [{c.table for c in read_cells([p])} for p in files]
    assert len(by_worker[0]) == 3 and len(by_worker[1]) == 2 and not by_worker[0] & by_worker[1]
    assert load_meta_model(meta).spec["performance_table"]["cells"] == 5 * 4


def test_shard_is_refused_under_torchrun(tmp_path: Path):
    from metagen_cli.app import app

    run = CliRunner().invoke(app, ["meta-portfolio", "-c", "sklearn", "--meta-model", str(tmp_path / "m"),
                                   "--cells", str(tmp_path), "--shard", "0/2"], env={"WORLD_SIZE": "2", "RANK": "0"})
    assert run.exit_code == 1 and "--shard is for workers started by hand" in run.output


@pytest.mark.skipif(torch.cuda.device_count() > 1, reason="this machine has a GPU for a second process")
def test_more_gpu_processes_than_gpus_is_a_user_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ConfigError, match="--nproc-per-node"):
        distributed.local_device(torch.device("cuda"))
    assert distributed.local_device(torch.device("cpu")) == torch.device("cpu")


def test_one_process_takes_the_whole_batch_and_needs_no_process_group():
    assert not distributed.launched() and distributed.world_size() == 1
    assert distributed.share(7) == (slice(0, 7), 1.0)
    value = torch.ones(3)
    distributed.sum_over_processes([value])
    assert torch.equal(value, torch.ones(3)) and distributed.from_main("x") == "x"
    assert distributed.spread(lambda i: i * i, 4) == [0, 1, 4, 9]


@pytest.mark.parametrize(("end", "code"), [("pass", 0), ("raise SystemExit(3)", 3), ("raise SystemExit('bad')", 1)])
def test_a_launched_process_ends_with_its_commands_exit_code_and_flushed_output(end: str, code: int):
    script = ("import sys; from metagen import distributed\n"
              f"def command():\n    print('written', end='')\n    {end}\n"
              "distributed.run_then_exit(command)\nprint('not reached')\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "WORLD_SIZE": "2"})
    assert (run.returncode, run.stdout) == (code, "written")
    assert ("bad" in run.stderr) == (code == 1)


if __name__ == "__main__":
    distributed.run_then_exit(lambda: _worker(Path(sys.argv[1])))
