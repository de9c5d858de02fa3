"""iMAML: the implicit meta-gradient is the exact one where that is known, and its memory is flat in inner steps."""

from dataclasses import replace

import pytest
import torch

from metagen.bench.engine import graph_saved_bytes
from metagen.errors import ConfigError
from metagen.maml import Implicit, MetaArch, implicit_query_loss, init_params, meta_loss_loop, meta_loss_vmap, pad_tasks
from metagen.meta_train import MetaTrainConfig, meta_gradient
from task_corpus import SamplerConfig, TaskSampler

ARCH = MetaArch(depth=2, width=16, gen_width=8, inner_steps=3)


@pytest.fixture(scope="module")
def tasks():
    sampler = TaskSampler([], SamplerConfig(n_support=24, n_query=24, max_columns=6, real_share=0.0), seed=3)
    return [sampler.sample(i) for i in range(40)]


def _batch(tasks, regression: bool, n: int = 3, double: bool = True):
    batch = pad_tasks([t for t in tasks if (t.kind == "regression") == regression][:n], 0, ARCH.width)
    if not double:
        return batch
    floats = {k: v.double() for k, v in vars(batch).items()
              if isinstance(v, torch.Tensor) and v.is_floating_point()}
    return replace(batch, **floats)


def _theta(double: bool = True):
    return {k: (v.double() if double else v).requires_grad_() for k, v in init_params(ARCH).items()}


def _linear_regression(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return x, x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.3 + 0.1 * torch.randn(n, generator=g)


@pytest.mark.parametrize("reg", [0.5, 2.0])
@pytest.mark.parametrize("rate", [0.2, 5.0], ids=["stable-rate", "diverging-rate"])
def test_implicit_gradient_is_the_exact_one_on_a_quadratic_inner_problem(reg, rate):
    """Linear regression: phi* = argmin L_s + reg/2 ||phi - phi0||^2 has a closed form to differentiate through.

    At rate 5 plain gradient descent diverges on this loss; the inner loop's step guard still converges.
    """
    xs, ys = _linear_regression(30, 0)
    xq, yq = _linear_regression(20, 1)
    theta = torch.tensor([0.2, 0.1, -0.3, 0.4], dtype=torch.float64, requires_grad=True)

    def start(t: torch.Tensor) -> dict[str, torch.Tensor]:  # a start that is a non-trivial function of theta
        return {"w": 2 * t[:3] + t[3], "b": t[3] ** 2}

    def loss(x: torch.Tensor, y: torch.Tensor, phi: dict[str, torch.Tensor]) -> torch.Tensor:
        return ((x @ phi["w"] + phi["b"] - y) ** 2).mean() / 2

    # closed form: (A + reg I) phi* = X^T y / n + reg phi0 with X = [xs, 1], A = X^T X / n
    phi0 = start(theta)
    design = torch.cat([xs, torch.ones(len(xs), 1, dtype=xs.dtype)], 1)
    lhs = design.T @ design / len(xs) + reg * torch.eye(4, dtype=xs.dtype)
    flat = torch.linalg.solve(lhs, design.T @ ys / len(xs) + reg * torch.cat([phi0["w"], phi0["b"][None]]))
    exact_loss = loss(xq, yq, {"w": flat[:3], "b": flat[3]})
    (exact,) = torch.autograd.grad(exact_loss, theta)

    def implicit(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        value = implicit_query_loss(start(theta), lambda p: loss(xs, ys, p), lambda p: loss(xq, yq, p),
                                    rate=lambda name, step: torch.tensor(rate), steps=steps,
                                    implicit=Implicit(reg=reg, cg_iters=4))  # 4 unknowns: CG is exact in 4
        return value, torch.autograd.grad(value, theta)[0]

    value, gradient = implicit(400)
    assert torch.allclose(value, exact_loss, rtol=1e-10)
    assert torch.allclose(gradient, exact, rtol=1e-8, atol=1e-10)
    _, unconverged = implicit(3)  # the gradient is phi*'s: it does not hold before the inner loop converges
    assert not torch.allclose(unconverged, exact, rtol=1e-3)


@pytest.mark.parametrize("regression", [False, True])
def test_imaml_batches_exactly_and_leaves_the_inner_rates_alone(tasks, regression):
    theta, batch = _theta(), _batch(tasks, regression)
    implicit = Implicit(cg_iters=5)
    lv = meta_loss_vmap(theta, ARCH, batch, 20, False, implicit)
    ll = meta_loss_loop(theta, ARCH, batch, 20, False, implicit)
    gv = dict(zip(theta, torch.autograd.grad(lv, list(theta.values()), allow_unused=True)))
    gl = dict(zip(theta, torch.autograd.grad(ll, list(theta.values()), allow_unused=True)))
    assert torch.allclose(lv, ll, rtol=1e-9)
    for k, v in theta.items():
        if k.startswith("lr."):  # Meta-SGD rates have no implicit gradient: they stay fixed
            assert gv[k] is None and gl[k] is None
        elif gv[k] is not None:
            assert gv[k].shape == v.shape and torch.isfinite(gv[k]).all()
            assert torch.allclose(gv[k], gl[k], rtol=1e-7, atol=1e-10), k
    assert gv["l1.w"].abs().sum() > 0 and gv["l0.b"].abs().sum() > 0


@pytest.mark.slow
def test_imaml_meta_gradient_agrees_with_finite_differences(tasks):
    """The meta-loss's value is the true objective: central differences along random directions check its gradient."""
    theta, batch = _theta(), _batch(tasks, False)
    implicit = Implicit(reg=1.0, cg_iters=20)

    def meta_loss(params):  # 300 steps: the inner loop converges, as the implicit gradient assumes
        return meta_loss_vmap(params, ARCH, batch, 300, False, implicit)

    grads = dict(zip(theta, torch.autograd.grad(meta_loss(theta), list(theta.values()), allow_unused=True)))
    g = torch.Generator().manual_seed(0)
    analytic, numeric = [], []
    for _ in range(4):
        direction = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in theta.items()
                     if grads[k] is not None}
        step = {k: 1e-4 * d for k, d in direction.items()}
        plus = {k: v.detach() + step.get(k, 0) for k, v in theta.items()}
        minus = {k: v.detach() - step.get(k, 0) for k, v in theta.items()}
        numeric.append(float(meta_loss(plus) - meta_loss(minus)) / 2e-4)
        analytic.append(sum(float((grads[k] * d).sum()) for k, d in direction.items()))
    analytic, numeric = torch.tensor(analytic), torch.tensor(numeric)
    # measured: cosine 0.998 (first-order iMAML, v = query gradient, gets 0.92)
    assert torch.nn.functional.cosine_similarity(analytic, numeric, dim=0) > 0.98
    assert torch.allclose(analytic, numeric, rtol=0.2, atol=0.02)


def test_imaml_memory_is_flat_in_inner_steps_and_unrolled_maml_grows(tasks):
    theta, batch = _theta(double=False), _batch(tasks, False, double=False)

    def saved(steps: int, **kwargs) -> int:
        return graph_saved_bytes(meta_loss_vmap(theta, ARCH, batch, steps, False, **kwargs))

    assert saved(5, implicit=Implicit()) == saved(100, implicit=Implicit())
    assert saved(100) > 10 * saved(5) > 0  # second order keeps every step's activations
    assert saved(100, implicit=Implicit()) < saved(5)


@pytest.mark.parametrize("engine", ["vmap", "loop"])
def test_meta_gradient_runs_imaml_and_bf16_keeps_its_direction(tasks, engine):
    batch = _batch(tasks, True, double=False)
    grads = {}
    for amp in ("off", "bf16"):
        theta = _theta(double=False)
        config = MetaTrainConfig(algorithm="imaml", engine=engine, inner_steps=10, amp=amp, imaml_cg_iters=4)
        loss = meta_gradient(theta, ARCH, batch, config)
        assert torch.isfinite(torch.tensor(loss))
        assert all(v.grad is None for k, v in theta.items() if k.startswith("lr."))
        grads[amp] = torch.cat([v.grad.flatten() for v in theta.values() if v.grad is not None])
    cosine = torch.nn.functional.cosine_similarity(grads["off"], grads["bf16"], dim=0)
    assert 0.95 < cosine < 1.0  # bf16 ran the inner loop, the CG solve stayed in float32


def test_config_names_imaml_and_checks_its_settings():
    with pytest.raises(ConfigError, match="imaml") as bad:
        MetaTrainConfig(algorithm="implicit")
    assert "fomaml, imaml" in bad.value.hint
    with pytest.raises(ConfigError, match="imaml_reg > 0"):
        MetaTrainConfig(algorithm="imaml", imaml_reg=0.0)
    with pytest.raises(ConfigError, match="imaml_cg_iters"):
        MetaTrainConfig(algorithm="imaml", imaml_cg_iters=0)
