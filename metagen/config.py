"""A network configuration: architecture plus how to train (adapt) it.

One frozen dataclass is the whole configuration, so the search (``families/mlp.py``),
the proposer and the model file all speak the same JSON.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from metagen.errors import ConfigError

ACTIVATIONS = ("relu", "gelu", "silu", "selu", "prelu")
NORMS = ("none", "layer")
SCALINGS = ("quantile", "robust")
SCHEDULES = ("constant", "cosine", "flat_cosine")


@dataclass(frozen=True)
class NetConfig:
    """Architecture and training hyperparameters of one candidate network."""

    depth: int = 2
    """Hidden layers (1 to 4)."""
    width: int = 256
    """Units per hidden layer."""
    activation: str = "relu"
    """One of ACTIVATIONS; ``prelu`` is RealMLP's parametric activation."""
    norm: str = "none"
    """``layer`` normalises each hidden layer; no batch norm so predictions never depend on the batch."""
    dropout: float = 0.1
    residual: bool = False
    """Skip connections between hidden layers of equal width."""
    scale_layer: bool = True
    """A learnable per-feature input scale (RealMLP), trained with ``scale_lr_mult`` x the learning rate."""
    scaling: str = "quantile"
    """Numeric preprocessing: quantile-to-normal, or robust scaling with smooth clipping."""
    lr: float = 2e-3
    weight_decay: float = 1e-5
    batch_size: int = 256
    steps: int = 400
    """Gradient steps (the adaptation budget)."""
    schedule: str = "flat_cosine"
    label_smoothing: float = 0.0
    init: str = "random"
    """``random``, or the name of a meta-model member whose learned starting point the network adapts from."""

    def __post_init__(self) -> None:
        checks = {
            "depth": 1 <= self.depth <= 8,
            "width": 4 <= self.width <= 4096,
            "activation": self.activation in ACTIVATIONS,
            "norm": self.norm in NORMS,
            "dropout": 0.0 <= self.dropout < 1.0,
            "scaling": self.scaling in SCALINGS,
            "lr": 0 < self.lr < 1,
            "weight_decay": self.weight_decay >= 0,
            "batch_size": self.batch_size >= 1,
            "steps": self.steps >= 0,
            "schedule": self.schedule in SCHEDULES,
            "label_smoothing": 0.0 <= self.label_smoothing < 0.5,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(
                f"Invalid network configuration value(s): {', '.join(f'{b}={getattr(self, b)!r}' for b in bad)}.",
                "See metagen.NetConfig for the allowed values.",
            )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "NetConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_(self, **changes: Any) -> "NetConfig":
        return replace(self, **changes)


ARCH_FIELDS = ("depth", "width", "activation", "norm", "residual", "scale_layer", "scaling")


def lr_at(config: NetConfig, step: int) -> float:
    """Learning-rate schedule; ``flat_cosine`` is RealMLP's flat-then-cosine."""
    total = max(config.steps, 1)
    t = step / total
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "flat_cosine":
        t = max(0.0, (t - 0.5) / 0.5)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
