"""A learned posterior over starting points: sampled starts, the same samples in every engine, a spread that learns."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from metagen.maml import MetaArch, init_params, meta_loss_loop, meta_loss_vmap, pad_tasks, sampled_names
from metagen.meta_model import MetaModel, initial_network, member_config, save_meta_model
from metagen.meta_train import MetaTrainConfig, meta_train
from metagen.metrics import expected_calibration_error
from metagen_cli.app import app
from task_corpus import SamplerConfig, TaskSampler

ARCH = MetaArch(depth=2, width=16, gen_width=8, inner_steps=3, front="pca", film=True, posterior=True)


@pytest.fixture(scope="module")
def tasks():
    sampler = TaskSampler([], SamplerConfig(n_support=24, n_query=24, max_columns=6, real_share=0.0), seed=3)
    return [t for t in (sampler.sample(i) for i in range(60)) if t.kind != "regression"]


def _weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_sampled_starts_are_reproducible_from_a_seed_and_differ_between_seeds(tasks):
    meta = MetaModel({ARCH.name: (ARCH, init_params(ARCH))})
    task = tasks[0]

    def start(seed: int) -> torch.Tensor:
        return _weights(initial_network(meta, ARCH.name, task.X_support, task.y_support, task.kind, task.n_classes,
                                        member_config(ARCH), steps=2, seed=seed))

    assert torch.equal(start(3), start(3))
    assert not torch.allclose(start(3), start(4))
    mean_only = replace(ARCH, posterior=False)
    theta = {k: v for k, v in init_params(ARCH).items() if not k.startswith("post.")}
    fixed = MetaModel({mean_only.name: (mean_only, theta)})
    same = [_weights(initial_network(fixed, mean_only.name, task.X_support, task.y_support, task.kind,
                                     task.n_classes, member_config(mean_only), seed=s)) for s in (3, 4)]
    assert torch.equal(*same), "without a posterior the PCA front's start does not depend on the seed"


def test_every_engine_draws_the_same_samples_and_the_spread_gets_a_gradient(tasks):
    theta = {k: v.double().requires_grad_() for k, v in init_params(ARCH).items()}
    batch = pad_tasks(tasks[:4], 7, ARCH.width)
    batch = replace(batch, **{k: getattr(batch, k).double() for k in ("xs", "xq", "ms", "mq", "cols", "classes",
                                                                     "noise")})
    losses = [fn(theta, ARCH, batch, 2, True) for fn in (meta_loss_vmap, meta_loss_loop)]
    assert torch.allclose(*losses, rtol=1e-9)
    grads = torch.autograd.grad(losses[0], [theta[f"post.{n}"] for n in sampled_names(ARCH)])
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    again = meta_loss_vmap(theta, ARCH, replace(batch, seed=8), 2, True)
    assert not torch.allclose(losses[0], again), "another batch seed draws other starts"


def test_meta_training_learns_a_spread_and_the_file_keeps_it(tasks, tmp_path):
    state = meta_train(ARCH, tasks, MetaTrainConfig(steps=15, meta_batch=4, inner_steps=3, eval_every=50))
    spreads = torch.cat([state.theta[f"post.{n}"].detach().reshape(-1) for n in sampled_names(ARCH)]).exp()
    assert not torch.allclose(spreads, torch.full_like(spreads, 0.05)), "the spread moved from where it started"
    meta = MetaModel({ARCH.name: (ARCH, {k: v.detach() for k, v in state.theta.items()})})
    path = save_meta_model(meta, tmp_path / "posterior.safetensors")
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(160, 4)), columns=list("abcd"))
    frame["target"] = (frame["a"] - frame["b"] > 0).astype(int)
    suite = tmp_path / "suite"
    suite.mkdir()
    frame.to_csv(suite / "tiny.tsv.gz", sep="\t", index=False)
    out = tmp_path / "posterior.json"
    run = CliRunner().invoke(app, ["bench", "posterior", "--suite", str(suite), "--meta-model", str(path),
                                   "--members", "3", "--steps", "30", "--json", str(out)])
    assert run.exit_code == 0, run.output
    records = json.loads(out.read_text())
    assert [r["ensemble"] for r in records] == ["posterior", "mean", "random"]
    assert all(r["score"] > 0.8 and 0 <= r["ece"] < 0.5 and r["disagreement"] > 0 for r in records)
    assert "mean over tables" in run.output


def test_bench_posterior_says_when_the_meta_model_has_no_posterior(tmp_path):
    plain = replace(ARCH, posterior=False)
    path = save_meta_model(MetaModel({plain.name: (plain, init_params(plain))}), tmp_path / "plain.safetensors")
    run = CliRunner().invoke(app, ["bench", "posterior", "--suite", "sklearn", "--meta-model", str(path)])
    assert run.exit_code != 0 and "--preset posterior" in run.output and "Traceback" not in run.output


def test_expected_calibration_error_is_zero_when_confidence_matches_accuracy():
    y = np.array([0, 0, 0, 1] * 25)
    honest = np.tile([0.75, 0.25], (100, 1))  # always says class 0 at 75 %, right 75 % of the time
    assert expected_calibration_error(y, honest) == pytest.approx(0.0)
    overconfident = np.tile([0.99, 0.01], (100, 1))
    assert expected_calibration_error(y, overconfident) == pytest.approx(0.24)


def test_a_task_keeps_its_sample_in_any_share_of_the_batch(tasks):
    """Processes of a distributed run each take a share of a batch: a task's start must not depend on the cut."""
    theta = init_params(ARCH)
    batch = pad_tasks(tasks[:4], 7, ARCH.width)
    whole = meta_loss_loop(theta, ARCH, batch, 1, True) * 4
    # each share's mean weighted by its size, as the processes combine them (the KL term then sums back to one)
    halves = sum(meta_loss_loop(theta, ARCH, batch.tasks(part), 1, True) * 2 for part in (slice(0, 2), slice(2, 4)))
    assert torch.allclose(whole, halves, rtol=1e-5)
    assert not torch.allclose(whole, meta_loss_loop(theta, ARCH, replace(batch, first=1), 1, True) * 4, rtol=1e-5)
