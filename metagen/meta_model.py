"""The meta-model file and the adaptation API the search uses.

A meta-model is one safetensors file: the meta-parameters of each member of the
architecture family, plus a JSON spec in the file's metadata (architectures,
training configuration, validation curve, provenance). No pickle anywhere.
The shipped one lives in ``metagen/assets`` and is read lazily, never at import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from metagen.config import NetConfig
from metagen.errors import ModelFileError
from metagen.maml import MetaArch, Params, inner_step, sample_noise, sampled, start
from metagen.network import MLP

FORMAT = "metagen-meta-model"
FORMAT_VERSION = 1
SHIPPED = Path(__file__).parent / "assets" / "meta-model.safetensors"
SUPPORT_ROWS = 512


@dataclass
class MetaModel:
    """Meta-parameters per architecture (``MetaArch.name``) and what made them."""

    members: dict[str, tuple[MetaArch, Params]]
    spec: dict = field(default_factory=dict)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    """Tensors beside the members' (the proposer's, under ``proposer/``), saved under their own names."""


def save_meta_model(model: MetaModel, path: str | Path) -> Path:
    path = Path(path)
    tensors = {f"{name}/{k}": v.detach().cpu().contiguous() for name, (_, p) in model.members.items()
               for k, v in p.items()}
    tensors.update({k: v.detach().cpu().contiguous() for k, v in model.extra.items()})
    spec = {**model.spec, "format": FORMAT, "format_version": FORMAT_VERSION,
            "members": {name: arch.to_json() for name, (arch, _) in model.members.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"spec": json.dumps(spec)})
    tmp.replace(path)
    return path


def load_meta_model(path: str | Path) -> MetaModel:
    path = Path(path)
    hint = "Pass a file written by `metagen meta-train`."
    if not path.is_file():
        raise ModelFileError(f"Meta-model file not found: {path}.", hint)
    try:
        with safe_open(str(path), framework="pt") as fh:
            spec = json.loads((fh.metadata() or {}).get("spec", "{}"))
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, json.JSONDecodeError, OSError) as exc:
        raise ModelFileError(f"{path} is not a readable meta-model file ({exc}).", hint) from exc
    if spec.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a metagen meta-model file.", hint)
    if spec.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(f"{path} needs a newer metagen.", "Upgrade metagen to use it.")
    members = {}
    for name, arch_json in spec["members"].items():
        params = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{name}/")}
        members[name] = (MetaArch(**arch_json), params)
    taken = {f"{name}/{k}" for name, (_, p) in members.items() for k in p}
    return MetaModel(members, spec, {k: v for k, v in tensors.items() if k not in taken})


@lru_cache(maxsize=1)
def shipped_meta_model() -> MetaModel | None:
    """The meta-model inside the package, or None when this build ships none."""
    return load_meta_model(SHIPPED) if SHIPPED.is_file() else None


def member_config(arch: MetaArch, **train: object) -> NetConfig:
    """The plain-network configuration an adapted member exports as."""
    return NetConfig(depth=arch.depth, width=arch.width, activation="relu", norm="none", residual=False,
                     scale_layer=False, init=arch.name, **train)  # type: ignore[arg-type]


def support_rows(y: np.ndarray, task: str, n: int, seed: int) -> np.ndarray:
    """A stratified subset of the rows the starting point is computed from."""
    rng = np.random.default_rng(seed)
    if len(y) <= n:
        return np.arange(len(y))
    if task == "regression":
        return np.sort(rng.choice(len(y), n, replace=False))
    take = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        k = max(1, int(round(n * len(members) / len(y))))
        take.append(rng.choice(members, min(k, len(members)), replace=False))
    return np.sort(np.concatenate(take))


def initial_network(meta: MetaModel, member: str, X: np.ndarray, y: np.ndarray, task: str, n_out: int,
                    config: NetConfig, steps: int = 0, seed: int = 0) -> MLP:
    """The learned starting point for this table after ``steps`` Meta-SGD steps, as a plain network.

    A member with a posterior gives each ``seed`` its own sampled start.

    The steps are the inner loop the meta-model was trained for (learned per-layer
    learning rates, full batch on up to ``SUPPORT_ROWS`` support rows). ``y`` holds
    class codes, or regression values already standardised.
    """
    arch, theta = meta.members[member]
    regression = task == "regression"

    def tensors(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ys = torch.from_numpy(y[rows].astype(np.float32 if regression else np.int64))
        return torch.from_numpy(X[rows].astype(np.float32)), ys, torch.ones(len(rows))

    cols, classes = torch.ones(X.shape[1]), torch.ones(n_out)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(X.shape[1], arch.width, generator=generator)
    theta = sampled(theta, arch, sample_noise(theta, arch, generator))  # a posterior's sample; else the mean
    xs, ys, ms = tensors(support_rows(y, task, SUPPORT_ROWS, seed))
    fast = start(theta, arch, xs, ys, ms, cols, classes, noise, regression)
    # Each step sees a fresh stratified batch, so large tables are used beyond the support rows.
    for step in range(steps):
        xb, yb, mb = tensors(support_rows(y, task, SUPPORT_ROWS, seed + 1 + step))
        fast = inner_step(theta, fast, arch, step, xb, yb, mb, classes, regression, first_order=True)
    model = MLP(X.shape[1], n_out, config)
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            block.linear.weight.copy_(fast[f"l{i}.w"].T)
            block.linear.bias.copy_(fast[f"l{i}.b"])
        model.head.weight.copy_(fast["head.w"].T)
        model.head.bias.copy_(fast["head.b"])
    return model
