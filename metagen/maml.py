"""The MAML engine: a learned initialization that adapts to any table in a few steps.

Width-agnostic front: the first layer's weight for each input column is *generated*
from that column's statistics on the support rows (a network shared over columns,
as in HyperFast / MotherNet) plus a fixed random part, so the same meta-learned
weights serve tables with any number and order of columns. The alternatives, a
canonical PCA or random-feature projection to a fixed width, are there to be measured
against it (``metagen bench ablate``). Hidden layers start from meta-learned weights,
optionally modulated by FiLM from a task embedding. The head starts from the support
set: class prototypes for classification (Proto-MAML), a closed-form ridge fit for
regression. Every start is a plain MLP's weights, so the adapted network exports as one.
With ``posterior`` the hidden layers and the front are a learned distribution (a mean and a
per-weight spread, as in amortised Bayesian MAML): each seed samples a start, and networks
adapted from several samples disagree where the table leaves the start's uncertainty.

Everything is a pure function of a parameter dict, so one code path serves CPU and
CUDA, ``torch.func.grad`` takes the inner steps, and ``torch.func.vmap`` runs a batch
of padded tasks at once. ``meta_loss_loop`` computes the same meta-gradient task by
task; it is the reference the batched engine is tested and benchmarked against.

The meta-gradient flows through the inner loop in one of two ways: unrolled (MAML,
second or first order; its memory grows with the inner steps) or implicit (iMAML:
the inner loop runs without a graph to the regularised solution, and a fixed number
of conjugate-gradient steps on Hessian-vector products carry the query gradient back
to the start, so memory stays flat however long the inner loop is).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal, get_args

import numpy as np
import torch
from torch.func import grad, grad_and_value, jvp, vmap

Tensor = torch.Tensor
Params = dict[str, Tensor]
Algorithm = Literal["maml", "fomaml", "imaml", "reptile"]
Front = Literal["generated", "pca", "random"]

N_STATS = 8
N_PROJ = 32  # components of the canonical projection fronts (``pca`` and ``random``)
MAX_LOG_LR = math.log(0.5)  # learned inner rates above this make meta-training diverge
_NEG = -1e4  # logit of a padded class
PRIOR_STD = 0.05
"""Spread a posterior starts at, and the broad prior its KL term pulls it back to."""
POSTERIOR_KL = 0.01
"""Weight of the KL term per weight: without it the query loss shrinks the spread to nothing."""
_TINY = 1e-30  # guards the conjugate-gradient divisions once the residual is zero
_ROUNDING = 1e-4  # iMAML's inner loop takes a step that raises its loss by less than this (relative): rounding


@dataclass(frozen=True)
class MetaArch:
    """One member of the meta-learned family of networks."""

    depth: int = 2
    """Hidden layers (the first one is the generated, width-agnostic layer)."""
    width: int = 128
    gen_width: int = 32
    """Hidden units of the network that turns column statistics into first-layer weights."""
    inner_steps: int = 5
    """Steps the per-step inner learning rates are learned for; later steps reuse the last."""
    front: Front = "generated"
    """How any table reaches the first layer: weights ``generated`` from column statistics, or a
    canonical ``pca`` / ``random`` projection to ``N_PROJ`` inputs followed by a meta-learned layer."""
    film: bool = False
    """Condition the hidden layers on the task: FiLM scales and shifts from a dataset embedding."""
    meta_sgd: bool = True
    """Learn per-layer, per-step inner learning rates; off, they stay at their initial value."""
    posterior: bool = False
    """Learn a spread around the hidden layers and the front, so starts are sampled (a seed per sample)."""

    def __post_init__(self) -> None:
        if self.front not in get_args(Front):
            raise ValueError(f"Unknown front {self.front!r}; use one of {get_args(Front)}.")

    @property
    def name(self) -> str:
        return f"d{self.depth}w{self.width}" + ("-posterior" if self.posterior else "")

    @property
    def embeds_columns(self) -> bool:
        """Whether the column-statistics network is used: the generated front and FiLM read it."""
        return self.front == "generated" or self.film

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class TaskBatch:
    """Padded tasks, leading dimension = task. Row, column and class masks mark what is real."""

    xs: Tensor  # (T, Ns, D)
    ys: Tensor  # (T, Ns) int64 classes or float standardised values
    ms: Tensor  # (T, Ns) row mask
    xq: Tensor  # (T, Nq, D)
    yq: Tensor
    mq: Tensor
    cols: Tensor  # (T, D) column mask
    classes: Tensor  # (T, C) class mask (one column for regression)
    noise: Tensor  # (T, D, H) fixed random part of the first layer
    regression: bool
    seed: int = 0
    """Seeds the posterior's samples of the batch's starts, so every engine draws the same ones."""
    first: int = 0
    """Index of the first task in the batch it was cut from: a task's sample follows it into a share."""

    def to(self, device: torch.device | str) -> "TaskBatch":
        moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        return TaskBatch(**moved)

    def tasks(self, part: slice) -> "TaskBatch":
        """The tasks ``part`` (a contiguous range), padding kept: padding does not change a task's loss."""
        parts = {k: (v[part] if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        return TaskBatch(**{**parts, "first": self.first + (part.start or 0)})

    def task(self, t: int) -> "TaskBatch":
        """Task ``t`` alone, keeping a leading dimension of one."""
        return self.tasks(slice(t, t + 1))

    @property
    def tensors(self) -> tuple[Tensor, ...]:
        return (self.xs, self.ys, self.ms, self.xq, self.yq, self.mq, self.cols, self.classes, self.noise)


def init_params(arch: MetaArch, seed: int = 0) -> Params:
    """Meta-parameters: column-statistics generator, hidden layers, inner learning rates, head scales."""
    g = torch.Generator().manual_seed(seed)
    H, G = arch.width, arch.gen_width

    def uniform(fan_in: int, *shape: int) -> Tensor:
        bound = 1.0 / math.sqrt(fan_in)
        return (torch.rand(*shape, generator=g) * 2 - 1) * bound

    p: Params = {"l0.b": torch.zeros(H)}
    if arch.embeds_columns:
        p |= {"gen.w1": uniform(N_STATS, N_STATS, G), "gen.b1": torch.zeros(G)}
    if arch.front == "generated":
        p |= {"gen.w2": uniform(G, G, H) * 0.1, "gen.b2": torch.zeros(H), "gen.log_noise": torch.tensor(0.0)}
    else:
        p["proj.w"] = uniform(N_PROJ, N_PROJ, H) * math.sqrt(3.0)
    if arch.film:  # zero maps: training starts from the unconditioned network
        for i in range(arch.depth):
            p[f"film{i}.scale"], p[f"film{i}.shift"] = torch.zeros(G, H), torch.zeros(G, H)
    for i in range(1, arch.depth):
        p[f"l{i}.w"] = uniform(H, H, H) * math.sqrt(3.0)  # He-uniform-like for ReLU
        p[f"l{i}.b"] = torch.zeros(H)
    p["head.log_scale"] = torch.tensor(0.0)
    p["head.log_ridge"] = torch.tensor(0.0)
    for name in fast_names(arch):
        p[f"lr.{name}"] = torch.full((arch.inner_steps,), math.log(0.05))
    if arch.posterior:
        for name in sampled_names(arch):
            p[f"post.{name}"] = torch.full_like(p[name], math.log(PRIOR_STD))
    return p


def sampled_names(arch: MetaArch) -> list[str]:
    """Meta-parameters a posterior samples around: the front's learned map and every hidden layer."""
    front = ["gen.w2"] if arch.front == "generated" else ["proj.w"]
    return front + [f"l{i}.{k}" for i in range(1, arch.depth) for k in ("w", "b")]


def sample_noise(theta: Params, arch: MetaArch, generator: torch.Generator) -> Params:
    """Standard normal draws for the posterior's sampled weights; none without a posterior."""
    if not arch.posterior:
        return {}
    device = theta[sampled_names(arch)[0]].device
    return {name: torch.randn(theta[name].shape, generator=generator).to(device) for name in sampled_names(arch)}


def sampled(theta: Params, arch: MetaArch, eps: Params) -> Params:
    """The meta-parameters with the posterior's sampled weights: mean + spread * eps (reparameterised)."""
    if not eps:
        return theta
    return {**theta, **{name: theta[name] + theta[f"post.{name}"].exp() * eps[name] for name in eps}}


def posterior_kl(theta: Params, arch: MetaArch) -> Tensor:
    """Mean KL per weight of N(mean, spread^2) from the broad prior N(mean, PRIOR_STD^2)."""
    logs = torch.cat([theta[f"post.{name}"].reshape(-1) for name in sampled_names(arch)])
    return (math.log(PRIOR_STD) - logs + (2 * logs).exp() / (2 * PRIOR_STD**2) - 0.5).mean()


def fast_names(arch: MetaArch) -> list[str]:
    names = ["l0.w", "l0.b"]
    for i in range(1, arch.depth):
        names += [f"l{i}.w", f"l{i}.b"]
    return names + ["head.w", "head.b"]


def column_stats(xs: Tensor, ys: Tensor, ms: Tensor, cols: Tensor, classes: Tensor, regression: bool) -> Tensor:
    """Per-column statistics on the support rows, (D, N_STATS); zeros for padded columns.

    Moments say what kind of column it is; the last ones say how it relates to the
    target, so the generated first layer starts from the informative columns.
    """
    n = ms.sum().clamp_min(1.0)
    w = ms[:, None]
    mean = (w * xs).sum(0) / n
    var = (w * (xs - mean) ** 2).sum(0) / n
    std = (var + 1e-6).sqrt()
    z = (xs - mean) / std * w
    skew = (z**3).sum(0) / n
    kurt = (z**4).sum(0) / n
    zero = (w * (xs == 0).to(xs.dtype)).sum(0) / n
    if regression:
        corr = (z * ys[:, None]).sum(0) / n
        eta = corr.abs()
    else:
        onehot = torch.nn.functional.one_hot(ys, classes.shape[0]).to(xs.dtype) * w
        n_c = onehot.sum(0)
        means = onehot.T @ z / n_c.clamp_min(1.0)[:, None]  # (C, D)
        eta = ((n_c[:, None] / n) * means**2).sum(0).clamp_min(0).sqrt()
        binary = (classes.sum() == 2).to(xs.dtype)
        p1 = n_c[1] / n
        corr = binary * (means[1] - means[0]) * (p1 * (1 - p1)).clamp_min(0).sqrt()
    stats = torch.stack(
        [mean, std.log(), skew.clamp(-5, 5) / 5, (kurt.clamp(max=50) + 1).log() / 4, zero, corr, eta,
         torch.ones_like(mean)],
        dim=-1,
    )
    return stats * cols[:, None]


def _full_precision(x: Tensor) -> torch.autocast:
    """Solves and eigendecompositions have no bfloat16 kernels: run them outside mixed precision."""
    return torch.autocast(x.device.type, enabled=False)


def pca_basis(xs: Tensor, ms: Tensor, cols: Tensor) -> Tensor:
    """(D, min(D, N_PROJ)) whitening projection onto the support rows' principal components.

    Components come in order of variance with the sign that makes them right-skewed,
    so the same meta-learned weights meet the same inputs whatever the column order.
    """
    with _full_precision(xs):
        n = ms.sum().clamp_min(1.0)
        mean = (ms[:, None] * xs).sum(0) / n
        xc = (xs - mean) * ms[:, None] * cols
        eye = torch.eye(xs.shape[1], dtype=xs.dtype, device=xs.device)
        evals, evecs = torch.linalg.eigh(xc.T @ xc / n + 1e-4 * eye)
        k = min(xs.shape[1], N_PROJ)
        evals, evecs = evals.flip(-1)[:k], evecs.flip(-1)[:, :k]
        sign = torch.where(((xc @ evecs) ** 3).sum(0) < 0, -1.0, 1.0).to(xs.dtype)
        real = (evals > 1e-3).to(xs.dtype)  # padded columns only carry the 1e-4 ridge
        return evecs * sign * real / (evals + 0.1).sqrt()


def column_embeddings(theta: Params, xs: Tensor, ys: Tensor, ms: Tensor, cols: Tensor, classes: Tensor,
                      regression: bool) -> Tensor:
    """(D, G): one learned embedding per column, from its statistics on the support rows."""
    return torch.relu(column_stats(xs, ys, ms, cols, classes, regression) @ theta["gen.w1"] + theta["gen.b1"])


def task_embedding(theta: Params, xs: Tensor, ys: Tensor, ms: Tensor, cols: Tensor, classes: Tensor,
                   regression: bool) -> Tensor:
    """(G,): the column embeddings' mean, which FiLM reads; the proposer's task encoder reads it too."""
    hidden = column_embeddings(theta, xs, ys, ms, cols, classes, regression)
    return (hidden * cols[:, None]).sum(0) / cols.sum().clamp_min(1.0)


def body_init(theta: Params, arch: MetaArch, xs: Tensor, ys: Tensor, ms: Tensor, cols: Tensor,
              classes: Tensor, noise: Tensor, regression: bool) -> Params:
    """First and hidden layers of one task's starting point (before the head)."""
    d = cols.sum().clamp_min(1.0)
    if arch.embeds_columns:  # (D, G): one embedding per column, from its statistics
        hidden = column_embeddings(theta, xs, ys, ms, cols, classes, regression)
    if arch.front == "generated":
        w0 = hidden @ theta["gen.w2"] + theta["gen.b2"] + theta["gen.log_noise"].exp() * noise
        w0 = w0 * cols[:, None] * (2.0 / d).sqrt()
    else:
        if arch.front == "pca":
            basis = pca_basis(xs, ms, cols)
        else:
            basis = noise[:, :N_PROJ] * cols[:, None] / d.sqrt()
        w0 = basis @ theta["proj.w"][: basis.shape[1]]
    fast = {"l0.w": w0, "l0.b": theta["l0.b"]}
    for i in range(1, arch.depth):
        fast[f"l{i}.w"], fast[f"l{i}.b"] = theta[f"l{i}.w"], theta[f"l{i}.b"]
    if arch.film:
        # FiLM on the start only: folded into each layer's weights, so the adapted network stays a plain MLP.
        task = (hidden * cols[:, None]).sum(0) / d  # task_embedding, from the embeddings already at hand
        for i in range(arch.depth):
            gain = 1 + task @ theta[f"film{i}.scale"]
            fast[f"l{i}.w"] = fast[f"l{i}.w"] * gain
            fast[f"l{i}.b"] = fast[f"l{i}.b"] * gain + task @ theta[f"film{i}.shift"]
    return fast


def slice_theta(theta: Params, big: MetaArch, small: MetaArch) -> Params:
    """The meta-parameters of ``small`` as a slice of the supernet ``big``: its first layers and units.

    Sliced hidden weights are scaled by sqrt(big.width / small.width), so a narrower
    slice keeps the supernet's activation scale. Slicing is differentiable: training
    slices trains the supernet.
    """
    shared = ("gen_width", "inner_steps", "front", "film", "meta_sgd")
    if small.depth > big.depth or small.width > big.width or any(
            getattr(small, f) != getattr(big, f) for f in shared):
        raise ValueError(f"{small} is not a slice of {big}.")
    if big.posterior or small.posterior:
        raise ValueError("A posterior's spreads are not sliced; train posterior members one by one.")
    w, keep = small.width, set(fast_names(small))
    out = {}
    for key, value in theta.items():
        layer = re.fullmatch(r"(l|film)(\d+)", key.split(".")[0])
        if key.startswith("lr."):
            if key[3:] in keep:
                out[key] = value
        elif layer:  # l{i}.* and film{i}.*
            i = int(layer[2])
            if i >= small.depth:
                continue
            if layer[1] == "film":
                out[key] = value[:, :w]
            elif key.endswith(".w") and i > 0:
                out[key] = value[:w, :w] * math.sqrt(big.width / w)
            else:
                out[key] = value[:w]
        elif key in ("gen.w2", "proj.w"):
            out[key] = value[:, :w]
        elif key == "gen.b2":
            out[key] = value[:w]
        else:
            out[key] = value
    return out


def embed(fast: Params, arch: MetaArch, x: Tensor) -> Tensor:
    h = torch.relu(x @ fast["l0.w"] + fast["l0.b"])
    for i in range(1, arch.depth):
        h = torch.relu(h @ fast[f"l{i}.w"] + fast[f"l{i}.b"])
    return h


def head_init(theta: Params, fast: Params, arch: MetaArch, xs: Tensor, ys: Tensor, ms: Tensor,
              classes: Tensor, regression: bool) -> Params:
    """Prototype head (classification) or ridge head (regression) from the support embeddings."""
    e = embed(fast, arch, xs) * ms[:, None]
    if regression:
        with _full_precision(e):
            e = e.to(ys.dtype)
            n = ms.sum().clamp_min(1.0)
            mean = e.sum(0) / n
            ec = (e - mean) * ms[:, None]
            eye = torch.eye(e.shape[1], dtype=e.dtype, device=e.device)
            gram = ec.T @ ec + theta["head.log_ridge"].exp() * n * eye
            w = torch.linalg.solve(gram, ec.T @ (ys * ms))
        return {**fast, "head.w": w[:, None], "head.b": -(mean @ w)[None]}
    onehot = torch.nn.functional.one_hot(ys, classes.shape[0]).to(e.dtype) * ms[:, None]
    protos = onehot.T @ e / onehot.sum(0).clamp_min(1.0)[:, None]  # (C, H)
    scale = theta["head.log_scale"].exp() / math.sqrt(arch.width)
    return {**fast, "head.w": 2 * scale * protos.T, "head.b": -scale * (protos**2).sum(-1)}


def task_loss(fast: Params, arch: MetaArch, x: Tensor, y: Tensor, m: Tensor, classes: Tensor,
              regression: bool) -> Tensor:
    out = embed(fast, arch, x) @ fast["head.w"] + fast["head.b"]
    if regression:
        per_row = (out[:, 0] - y) ** 2
    else:
        logits = torch.where(classes.bool(), out, torch.full_like(out, _NEG))
        per_row = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    return (per_row * m).sum() / m.sum().clamp_min(1.0)


def start(theta: Params, arch: MetaArch, xs: Tensor, ys: Tensor, ms: Tensor, cols: Tensor, classes: Tensor,
          noise: Tensor, regression: bool) -> Params:
    """One task's starting point: generated first layer, learned hidden layers, support-set head."""
    fast = body_init(theta, arch, xs, ys, ms, cols, classes, noise, regression)
    return head_init(theta, fast, arch, xs, ys, ms, classes, regression)


def inner_rate(theta: Params, arch: MetaArch, name: str, step: int, learned: bool) -> Tensor:
    """Step ``step``'s learning rate for fast weight ``name`` (later steps reuse the last learned one)."""
    log_lr = theta[f"lr.{name}"][min(step, arch.inner_steps - 1)]
    return (log_lr if learned else log_lr.detach()).clamp(max=MAX_LOG_LR).exp()


def inner_step(theta: Params, fast: Params, arch: MetaArch, step: int, xs: Tensor, ys: Tensor, ms: Tensor,
               classes: Tensor, regression: bool, first_order: bool) -> Params:
    """One Meta-SGD step: per-layer, per-step learned learning rates."""
    g = grad(task_loss)(fast, arch, xs, ys, ms, classes, regression)
    new = {}
    for name, value in fast.items():
        gk = g[name].detach() if first_order else g[name]
        new[name] = value - inner_rate(theta, arch, name, step, arch.meta_sgd) * gk
    return new


def adapt(theta: Params, arch: MetaArch, steps: int, xs: Tensor, ys: Tensor, ms: Tensor, cols: Tensor,
          classes: Tensor, noise: Tensor, regression: bool, first_order: bool = False) -> Params:
    fast = start(theta, arch, xs, ys, ms, cols, classes, noise, regression)
    for step in range(steps):
        fast = inner_step(theta, fast, arch, step, xs, ys, ms, classes, regression, first_order)
    return fast


START_WEIGHT = 0.3
"""Share of the meta-loss taken at the starting point itself, so step 0 is already a good model."""


def _one_task_meta_loss(theta: Params, arch: MetaArch, steps: int, first_order: bool, regression: bool,
                        xs: Tensor, ys: Tensor, ms: Tensor, xq: Tensor, yq: Tensor, mq: Tensor,
                        cols: Tensor, classes: Tensor, noise: Tensor) -> Tensor:
    fast = start(theta, arch, xs, ys, ms, cols, classes, noise, regression)
    at_start = task_loss(fast, arch, xq, yq, mq, classes, regression)
    for step in range(steps):
        fast = inner_step(theta, fast, arch, step, xs, ys, ms, classes, regression, first_order)
    at_end = task_loss(fast, arch, xq, yq, mq, classes, regression)
    return START_WEIGHT * at_start + (1 - START_WEIGHT) * at_end


@dataclass(frozen=True)
class Implicit:
    """iMAML's inner problem, argmin_phi L_support(phi) + reg / 2 * ||phi - start||^2, and its solve."""

    reg: float = 1.0
    """lambda: how strongly the adapted weights are tied to the start (larger: shorter reach, easier solve)."""
    cg_iters: int = 8
    """Conjugate-gradient iterations for (I + H / lambda) v = query gradient; fixed, so it runs under vmap."""


def _dot(a: Params, b: Params) -> Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


def conjugate_gradient(matvec: Callable[[Params], Params], b: Params, iters: int) -> Params:
    """Solve ``matvec(x) = b`` by ``iters`` CG iterations, with no data-dependent Python branch.

    A direction of non-positive curvature (the support loss of a ReLU network need not be
    convex) gets a zero step instead of a sign flip, so the solve stays finite.
    """
    x = {k: torch.zeros_like(v) for k, v in b.items()}
    r, p = b, b
    rr = _dot(r, r)
    for _ in range(iters):
        ap = matvec(p)
        pap = _dot(p, ap)
        alpha = torch.where(pap > 0, rr / pap.clamp_min(_TINY), torch.zeros_like(pap))
        x = {k: x[k] + alpha * p[k] for k in x}
        r = {k: r[k] - alpha * ap[k] for k in r}
        rr_next = _dot(r, r)
        beta = rr_next / rr.clamp_min(_TINY)
        p = {k: r[k] + beta * p[k] for k in r}
        rr = rr_next
    return x


def implicit_query_loss(phi0: Params, support: Callable[[Params], Tensor], query: Callable[[Params], Tensor],
                        rate: Callable[[str, int], Tensor], steps: int, implicit: Implicit) -> Tensor:
    """The query loss at the regularised inner solution phi*, with iMAML's gradient with respect to ``phi0``.

    The inner loop takes ``steps`` gradient steps on the regularised support loss from
    phi0 without a graph. A step that raises that loss is refused and the task's step size
    halved for good: the fixed rates cannot learn to stay below the curvature as Meta-SGD's
    do, and without the guard a start with sharp curvature sent the loop (and meta-training)
    to NaN. At phi*, d phi* / d phi0 =
    (I + H / lambda)^-1 with H the support loss's Hessian, so the query gradient g reaches
    phi0 as v = (I + H / lambda)^-1 g, solved by CG on Hessian-vector products (in float32,
    outside mixed precision). The value returned is L_query(phi*); its gradient is
    <v, d phi0>, through phi0's graph only.
    """
    anchor = {k: v.detach() for k, v in phi0.items()}

    def regularised(phi: Params) -> Tensor:
        return support(phi) + implicit.reg / 2 * sum(((phi[k] - anchor[k]) ** 2).sum() for k in phi)

    phi = anchor
    g, value = grad_and_value(regularised)(phi)
    scale = torch.ones_like(value)
    for step in range(steps):
        trial = {k: phi[k] - scale * rate(k, step) * g[k] for k in phi}
        g_trial, value_trial = grad_and_value(regularised)(trial)
        better = value_trial <= value + _ROUNDING * value.abs()  # False for NaN as well
        phi = {k: torch.where(better, trial[k], phi[k]) for k in phi}
        g = {k: torch.where(better, g_trial[k], g[k]) for k in g}
        value = torch.where(better, value_trial, value)
        scale = torch.where(better, scale, scale / 2)
    g_query, at_end = grad_and_value(query)(phi)
    with _full_precision(at_end):  # the weights' own precision (float32), never bfloat16

        def matvec(u: Params) -> Params:
            hu = jvp(grad(support), (phi,), (u,))[1]
            return {k: u[k] + hu[k] / implicit.reg for k in u}

        v = conjugate_gradient(matvec, g_query, implicit.cg_iters)
    carried = sum((v[k] * (phi0[k] - anchor[k])).sum() for k in phi0)  # value 0, gradient v
    return at_end.detach() + carried


def _one_task_implicit_loss(theta: Params, arch: MetaArch, steps: int, implicit: Implicit, regression: bool,
                            xs: Tensor, ys: Tensor, ms: Tensor, xq: Tensor, yq: Tensor, mq: Tensor,
                            cols: Tensor, classes: Tensor, noise: Tensor) -> Tensor:
    """iMAML's counterpart of ``_one_task_meta_loss``: the inner rates stay fixed (they get no implicit gradient)."""
    phi0 = start(theta, arch, xs, ys, ms, cols, classes, noise, regression)
    at_start = task_loss(phi0, arch, xq, yq, mq, classes, regression)
    at_end = implicit_query_loss(
        phi0,
        support=lambda phi: task_loss(phi, arch, xs, ys, ms, classes, regression),
        query=lambda phi: task_loss(phi, arch, xq, yq, mq, classes, regression),
        rate=lambda name, step: inner_rate(theta, arch, name, step, learned=False),
        steps=steps, implicit=implicit,
    )
    return START_WEIGHT * at_start + (1 - START_WEIGHT) * at_end


def _task_meta_loss(theta: Params, arch: MetaArch, steps: int, first_order: bool, implicit: Implicit | None,
                    regression: bool) -> Callable[..., Tensor]:
    """One task's meta-loss as a function of its posterior sample and its tensors: unrolled (MAML) or implicit
    (iMAML)."""
    def one(eps: Params, *tensors: Tensor) -> Tensor:
        theta_t = sampled(theta, arch, eps)
        if implicit is not None:
            return _one_task_implicit_loss(theta_t, arch, steps, implicit, regression, *tensors)
        return _one_task_meta_loss(theta_t, arch, steps, first_order, regression, *tensors)

    return one


def _batch_noise(theta: Params, arch: MetaArch, batch: TaskBatch) -> Params:
    """One posterior sample per task, from the batch's seed and the task's index: the same for every engine
    and in every process's share of the batch."""
    if not arch.posterior:
        return {}
    draws = [sample_noise(theta, arch, torch.Generator().manual_seed(batch.seed * 1_000_003 + batch.first + i))
             for i in range(batch.xs.shape[0])]
    return {name: torch.stack([d[name] for d in draws]) for name in draws[0]}


def _with_kl(loss: Tensor, theta: Params, arch: MetaArch) -> Tensor:
    return loss + POSTERIOR_KL * posterior_kl(theta, arch) if arch.posterior else loss


def meta_loss_vmap(theta: Params, arch: MetaArch, batch: TaskBatch, steps: int, first_order: bool,
                   implicit: Implicit | None = None) -> Tensor:
    """Mean query loss after ``steps`` inner steps, all tasks of the batch at once (iMAML with ``implicit``)."""
    one = _task_meta_loss(theta, arch, steps, first_order, implicit, batch.regression)
    return _with_kl(vmap(one)(_batch_noise(theta, arch, batch), *batch.tensors).mean(), theta, arch)


def meta_loss_loop(theta: Params, arch: MetaArch, batch: TaskBatch, steps: int, first_order: bool,
                   implicit: Implicit | None = None) -> Tensor:
    """The same mean query loss, one task at a time (the reference for the batched engine)."""
    one = _task_meta_loss(theta, arch, steps, first_order, implicit, batch.regression)
    noise = _batch_noise(theta, arch, batch)
    losses = [one({k: v[i] for k, v in noise.items()}, *(t[i] for t in batch.tensors))
              for i in range(batch.xs.shape[0])]
    return _with_kl(torch.stack(losses).mean(), theta, arch)


def reptile_grad(theta: Params, arch: MetaArch, batch: TaskBatch, steps: int) -> Params:
    """Reptile's pseudo-gradient (theta - adapted weights) for the shared hidden layers; a cheap baseline."""
    with torch.no_grad():
        adapted = vmap(
            lambda *t: adapt(theta, arch, steps, *t[:3], *t[6:], batch.regression, True)
        )(*batch.tensors)
    return {k: (theta[k] - adapted[k].mean(0)) for k in adapted if k in theta}


def pad_tasks(tasks: list, noise_seed: int, width: int) -> TaskBatch:
    """Pad tasks of one kind (plain arrays from ``task_corpus``) to common shapes.

    Padded rows have mask 0, padded columns are zeros (they add nothing to the first
    layer), padded classes get a very negative logit.
    """
    regression = tasks[0].kind == "regression"
    if any((t.kind == "regression") != regression for t in tasks):
        raise ValueError("pad_tasks takes tasks of one kind: all regression or all classification.")
    T = len(tasks)
    ns = max(len(t.y_support) for t in tasks)
    nq = max(len(t.y_query) for t in tasks)
    d = max(t.X_support.shape[1] for t in tasks)
    c = 1 if regression else max(t.n_classes for t in tasks)
    xs, xq = np.zeros((T, ns, d), np.float32), np.zeros((T, nq, d), np.float32)
    ms, mq = np.zeros((T, ns), np.float32), np.zeros((T, nq), np.float32)
    ydtype = np.float32 if regression else np.int64
    ys, yq = np.zeros((T, ns), ydtype), np.zeros((T, nq), ydtype)
    cols, classes = np.zeros((T, d), np.float32), np.zeros((T, c), np.float32)
    for i, t in enumerate(tasks):
        a, b, k = len(t.y_support), len(t.y_query), t.X_support.shape[1]
        xs[i, :a, :k], xq[i, :b, :k] = t.X_support, t.X_query
        ms[i, :a], mq[i, :b], cols[i, :k] = 1, 1, 1
        if regression:
            mu, sd = float(np.mean(t.y_support)), float(np.std(t.y_support)) or 1.0
            ys[i, :a], yq[i, :b] = (t.y_support - mu) / sd, (t.y_query - mu) / sd
            classes[i, 0] = 1
        else:
            ys[i, :a], yq[i, :b] = t.y_support, t.y_query
            classes[i, : t.n_classes] = 1
    noise = torch.randn(T, d, width, generator=torch.Generator().manual_seed(noise_seed))
    as_t = torch.from_numpy
    return TaskBatch(as_t(xs), as_t(ys), as_t(ms), as_t(xq), as_t(yq), as_t(mq), as_t(cols), as_t(classes),
                     noise, regression, seed=noise_seed)
