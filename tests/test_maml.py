"""The MAML engine: batched equals looped, masks are exact, training learns and resumes."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from metagen.maml import MetaArch, init_params, meta_loss_loop, meta_loss_vmap, pad_tasks, slice_theta
from metagen.meta_model import MetaModel, initial_network, load_meta_model, member_config, save_meta_model
from metagen.meta_train import MetaTrainConfig, meta_gradient, meta_train, new_state, validation_loss
from task_corpus import SamplerConfig, TaskSampler

ARCH = MetaArch(depth=2, width=16, gen_width=8, inner_steps=3)


@pytest.fixture(scope="module")
def tasks():
    sampler = TaskSampler([], SamplerConfig(n_support=24, n_query=24, max_columns=6, real_share=0.0), seed=3)
    return [sampler.sample(i) for i in range(120)]


def _kind(tasks, regression: bool, n: int = 4):
    return [t for t in tasks if (t.kind == "regression") == regression][:n]


def _theta(seed: int = 0, arch: MetaArch = ARCH):
    return {k: v.double().requires_grad_() for k, v in init_params(arch, seed).items()}


def _double(batch):
    return replace(batch, xs=batch.xs.double(), xq=batch.xq.double(), ms=batch.ms.double(), mq=batch.mq.double(),
                   cols=batch.cols.double(), classes=batch.classes.double(), noise=batch.noise.double(),
                   ys=batch.ys.double() if batch.regression else batch.ys,
                   yq=batch.yq.double() if batch.regression else batch.yq)


def _grads(loss_fn, theta, batch, steps, first_order, arch: MetaArch = ARCH):
    loss = loss_fn(theta, arch, batch, steps, first_order)
    return loss, torch.autograd.grad(loss, list(theta.values()), allow_unused=True)


@pytest.mark.parametrize("regression", [False, True])
@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_meta_gradient_equals_loop(tasks, regression, first_order):
    theta, batch = _theta(), _double(pad_tasks(_kind(tasks, regression), 0, ARCH.width))
    lv, gv = _grads(meta_loss_vmap, theta, batch, 3, first_order)
    ll, gl = _grads(meta_loss_loop, theta, batch, 3, first_order)
    assert torch.allclose(lv, ll, rtol=1e-9)
    for a, b in zip(gv, gl):
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-7, atol=1e-10)


def test_first_order_is_second_order_without_its_second_order_terms(tasks):
    batch = _double(pad_tasks(_kind(tasks, False), 0, ARCH.width))
    theta = _theta()
    _, so = _grads(meta_loss_vmap, theta, batch, 2, False)
    _, fo = _grads(meta_loss_vmap, theta, batch, 2, True)
    assert any(not torch.allclose(a, b) for a, b in zip(so, fo) if a is not None)  # the terms exist
    with torch.no_grad():  # with vanishing inner steps the second-order terms vanish too
        for k, v in theta.items():
            if k.startswith("lr."):
                v.fill_(np.log(1e-9))
    _, so = _grads(meta_loss_vmap, theta, batch, 2, False)
    _, fo = _grads(meta_loss_vmap, theta, batch, 2, True)
    for k, a, b in zip(theta, so, fo):
        if a is not None and not k.startswith("lr."):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-8), k


@pytest.mark.parametrize("regression", [False, True])
def test_padding_and_masking_do_not_change_losses(tasks, regression):
    small, big = _kind(tasks, regression, 2)
    theta = _theta()
    alone = pad_tasks([small], 7, ARCH.width)
    together = pad_tasks([small, big], 7, ARCH.width)
    assert together.xs.shape[1:] != alone.xs.shape[1:] or together.classes.shape != alone.classes.shape
    # the same fixed random first-layer part for the real columns
    together.noise[0, : alone.noise.shape[1]] = alone.noise[0]
    a = meta_loss_loop(theta, ARCH, _double(alone), 3, False)
    b = meta_loss_loop(theta, ARCH, _double(together.task(0)), 3, False)
    assert torch.allclose(a, b, rtol=1e-9)


def test_meta_training_lowers_validation_loss(tasks):
    config = MetaTrainConfig(steps=80, meta_batch=8, inner_steps=ARCH.inner_steps, outer_lr=3e-3, eval_every=80)
    val = [pad_tasks([t], 99 + i, ARCH.width) for i, t in enumerate(tasks[90:])]
    before = validation_loss(new_state(ARCH, config, torch.device("cpu")).theta, ARCH, val, 3)
    state = meta_train(ARCH, tasks[:90], config)
    after = validation_loss(state.theta, ARCH, val, 3)
    assert after < before


def test_checkpoint_resumes_to_the_same_state(tasks, tmp_path):
    config = MetaTrainConfig(steps=6, meta_batch=4, inner_steps=ARCH.inner_steps)
    straight = meta_train(ARCH, tasks, config)
    ckpt = tmp_path / "ckpt.safetensors"
    meta_train(ARCH, tasks, replace(config, steps=3), checkpoint=ckpt)
    resumed = meta_train(ARCH, tasks, config, checkpoint=ckpt)
    assert resumed.step == 6
    for k in straight.theta:
        assert torch.allclose(straight.theta[k], resumed.theta[k], atol=1e-6), k


def test_meta_model_file_and_learned_start(tasks, tmp_path):
    theta = {k: v.detach() for k, v in init_params(ARCH).items()}
    path = save_meta_model(MetaModel({ARCH.name: (ARCH, theta)}, {"note": "test"}), tmp_path / "m.safetensors")
    meta = load_meta_model(path)
    assert meta.spec["note"] == "test" and torch.equal(meta.members[ARCH.name][1]["l1.w"], theta["l1.w"])
    task = _kind(tasks, False, 1)[0]
    config = member_config(ARCH)
    model = initial_network(meta, ARCH.name, task.X_support, task.y_support, task.kind, task.n_classes, config)
    assert model.head.weight.shape == (task.n_classes, ARCH.width)
    with torch.no_grad():
        logits = model(torch.from_numpy(task.X_support))
    # the prototype head already separates the support classes better than chance
    assert (logits.argmax(1).numpy() == task.y_support).mean() > 1.0 / task.n_classes


@pytest.mark.parametrize("arch", [ARCH, replace(ARCH, front="pca", film=True)], ids=["generated", "pca+film"])
def test_fit_starts_trials_from_the_learned_init(arch, tmp_path):
    from metagen import FitOptions, fit_table, make_table

    theta = {k: v.detach() for k, v in init_params(arch).items()}
    meta = MetaModel({arch.name: (arch, theta)})
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(120, 3)), columns=list("abc"))
    frame["target"] = (frame["a"] > 0).astype(int)
    # 20 steps: below successive halving's first rung, so an untrained start cannot be stopped early
    fitted = fit_table(make_table(frame), FitOptions(n_trials=2, max_steps=20, families=("mlp",)), meta=meta)
    starts = [row["config"]["init"] for row in fitted.leaderboard]
    assert arch.name in starts and "random" in starts
    assert fitted.predict_raw(frame[list("abc")]).shape == (120, 2)
    no_meta = fit_table(make_table(frame), FitOptions(n_trials=2, max_steps=20, families=("mlp",), use_meta=False),
                        meta=meta)
    assert {row["config"]["init"] for row in no_meta.leaderboard} == {"random"}


VARIANTS = [replace(ARCH, front="pca"), replace(ARCH, front="random"), replace(ARCH, film=True)]


@pytest.mark.parametrize("arch", VARIANTS, ids=["pca", "random", "film"])
@pytest.mark.parametrize("regression", [False, True])
def test_every_front_batches_exactly(tasks, arch, regression):
    theta, batch = _theta(arch=arch), _double(pad_tasks(_kind(tasks, regression), 0, arch.width))
    lv, gv = _grads(meta_loss_vmap, theta, batch, 2, False, arch)
    ll, gl = _grads(meta_loss_loop, theta, batch, 2, False, arch)
    assert torch.allclose(lv, ll, rtol=1e-9)
    assert all(torch.allclose(a, b, rtol=1e-7, atol=1e-10) for a, b in zip(gv, gl) if a is not None)
    assert gv[list(theta).index("proj.w" if arch.front != "generated" else "film1.scale")].abs().sum() > 0


def test_pca_front_ignores_column_order_and_padding(tasks):
    arch = replace(ARCH, front="pca")
    theta = _theta(arch=arch)
    task = _kind(tasks, False, 1)[0]
    batch = _double(pad_tasks([task], 0, arch.width))
    order = torch.randperm(batch.xs.shape[-1], generator=torch.Generator().manual_seed(1))
    shuffled = replace(batch, xs=batch.xs[..., order], xq=batch.xq[..., order])
    wider = _double(pad_tasks([task, max(_kind(tasks, False, 8), key=lambda t: t.X_support.shape[1])], 0,
                              arch.width)).task(0)
    assert wider.xs.shape[-1] > batch.xs.shape[-1]
    losses = [meta_loss_loop(theta, arch, b, 2, False) for b in (batch, shuffled, wider)]
    assert torch.allclose(losses[0], losses[1], rtol=1e-7) and torch.allclose(losses[0], losses[2], rtol=1e-7)


def test_film_starts_as_the_unconditioned_network(tasks):
    film = replace(ARCH, film=True)
    theta = _theta(arch=film)
    batch = _double(pad_tasks(_kind(tasks, False), 0, ARCH.width))
    plain = {k: v for k, v in theta.items() if not k.startswith("film")}
    assert torch.allclose(meta_loss_vmap(theta, film, batch, 2, True), meta_loss_vmap(plain, ARCH, batch, 2, True))


def test_without_meta_sgd_the_inner_rates_get_no_gradient(tasks):
    arch = replace(ARCH, meta_sgd=False)
    theta, batch = _theta(arch=arch), _double(pad_tasks(_kind(tasks, True), 0, arch.width))
    _, grads = _grads(meta_loss_vmap, theta, batch, 2, False, arch)
    by_name = dict(zip(theta, grads))
    assert all(by_name[k] is None for k in theta if k.startswith("lr."))
    assert by_name["l1.w"] is not None


def test_supernet_slices_share_and_train_one_set_of_parameters(tasks):
    big, small = replace(ARCH, depth=3, width=24), ARCH
    theta = init_params(big)
    sliced = slice_theta(theta, big, small)
    assert {k: v.shape for k, v in sliced.items()} == {k: v.shape for k, v in init_params(small).items()}
    with pytest.raises(ValueError, match="not a slice"):
        slice_theta(theta, big, replace(small, film=True))
    config = MetaTrainConfig(steps=4, meta_batch=4, inner_steps=ARCH.inner_steps, outer_lr=1e-2)
    state = meta_train(big, tasks, config, slices=(small, big))
    moved = {k: not torch.equal(state.theta[k].detach(), theta[k]) for k in theta}
    assert moved["l1.w"] and moved["l2.w"]  # l1 trained by both slices, l2 by the full net only
    unsliced = state.theta["l1.w"].detach()[small.width:, small.width:]
    assert not torch.equal(unsliced, theta["l1.w"][small.width:, small.width:])


def test_bf16_mixed_precision_keeps_the_meta_gradient(tasks):
    batch = pad_tasks(_kind(tasks, True), 0, ARCH.width)
    grads = {}
    for amp in ("off", "bf16"):
        theta = {k: v.requires_grad_() for k, v in init_params(ARCH).items()}
        meta_gradient(theta, ARCH, batch, MetaTrainConfig(inner_steps=2, amp=amp))
        grads[amp] = torch.cat([v.grad.flatten() for v in theta.values() if v.grad is not None])
    cosine = torch.nn.functional.cosine_similarity(grads["off"], grads["bf16"], dim=0)
    assert 0.95 < cosine < 1.0  # bf16 really ran, and the direction survived it
    with MetaTrainConfig(amp="auto").autocast(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")  # auto: bf16 on CUDA only
