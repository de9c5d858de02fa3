"""A network configuration: architecture plus how to train (adapt) it.

One frozen dataclass is the whole configuration, so the search, the proposer and
the model file all speak the same JSON.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import optuna

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


def suggest_config(trial: optuna.Trial, max_steps: int | None = None, member: NetConfig | None = None) -> NetConfig:
    """The search space, which holds RealMLP-TD's ingredients so that beating it means something.

    A trial that adapts a meta-model ``member``'s learned start keeps that member's
    architecture and draws only how it trains.
    """
    steps_hi = max_steps or 2000
    steps_lo = min(50, steps_hi)
    init = "random" if member is None else member.init
    if member is None:
        arch = dict(
            depth=trial.suggest_int("depth", 1, 4),
            width=trial.suggest_categorical("width", [64, 128, 256, 512]),
            activation=trial.suggest_categorical("activation", list(ACTIVATIONS)),
            norm=trial.suggest_categorical("norm", list(NORMS)),
            residual=trial.suggest_categorical("residual", [False, True]),
            scale_layer=trial.suggest_categorical("scale_layer", [False, True]),
            scaling=trial.suggest_categorical("scaling", list(SCALINGS)),
        )
    else:
        arch = {k: getattr(member, k) for k in ARCH_FIELDS}
    return NetConfig(
        **arch,
        init=init,
        dropout=trial.suggest_float("dropout", 0.0, 0.5),
        lr=trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        weight_decay=trial.suggest_float("weight_decay", 1e-7, 1e-2, log=True),
        batch_size=trial.suggest_categorical("batch_size", [64, 128, 256, 512]),
        steps=trial.suggest_int("steps", steps_lo, steps_hi, log=True),
        schedule=trial.suggest_categorical("schedule", list(SCHEDULES)),
        label_smoothing=trial.suggest_float("label_smoothing", 0.0, 0.2),
    )


def trial_params(config: NetConfig, max_steps: int | None = None) -> dict[str, Any]:
    """Parameters for ``study.enqueue_trial`` so a known configuration is tried first."""
    params = config.to_json()
    params.pop("init")  # which start a trial adapts is not a search parameter
    steps_hi = max_steps or 2000
    params["steps"] = int(min(max(params["steps"], min(50, steps_hi)), steps_hi))
    if config.init != "random":  # a member's architecture is fixed
        params = {k: v for k, v in params.items() if k not in ARCH_FIELDS}
    return params


def lr_at(config: NetConfig, step: int) -> float:
    """Learning-rate schedule; ``flat_cosine`` is RealMLP's flat-then-cosine."""
    total = max(config.steps, 1)
    t = step / total
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "flat_cosine":
        t = max(0.0, (t - 0.5) / 0.5)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
