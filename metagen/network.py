"""The network built from a :class:`NetConfig`: an MLP that any stage can call functionally."""

from __future__ import annotations

import torch
from torch import nn

from metagen.config import NetConfig


def _activation(name: str, width: int) -> nn.Module:
    return {
        "relu": nn.ReLU,
        "gelu": nn.GELU,
        "silu": nn.SiLU,
        "selu": nn.SELU,
    }.get(name, lambda: nn.PReLU(width, init=0.25))()


class Block(nn.Module):
    def __init__(self, n_in: int, width: int, config: NetConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, width)
        self.norm = nn.LayerNorm(width) if config.norm == "layer" else nn.Identity()
        self.act = _activation(config.activation, width)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x_BD: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.norm(self.linear(x_BD))))


class MLP(nn.Module):
    """Optional per-feature scale, ``depth`` hidden blocks (optionally residual), a linear head."""

    def __init__(self, n_in: int, n_out: int, config: NetConfig) -> None:
        super().__init__()
        self.n_in, self.n_out, self.residual = n_in, n_out, config.residual
        self.scale = nn.Parameter(torch.ones(n_in)) if config.scale_layer else None
        dims = [n_in] + [config.width] * config.depth
        self.blocks = nn.ModuleList(Block(a, b, config) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(config.width, n_out)

    def forward(self, x_BF: torch.Tensor) -> torch.Tensor:
        h = x_BF * self.scale if self.scale is not None else x_BF
        for i, block in enumerate(self.blocks):
            z = block(h)
            h = h + z if self.residual and i > 0 else z
        return self.head(h)

