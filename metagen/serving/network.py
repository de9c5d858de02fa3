"""A trained network: its configuration and weights, run with torch in inference mode."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from metagen.config import NetConfig
from metagen.network import MLP

_BATCH = 8192


@dataclass
class NetworkPart:
    kind: ClassVar[str] = "network"

    config: NetConfig
    n_in: int
    n_out: int
    state: dict[str, np.ndarray]
    regression: bool
    _model: MLP | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_module(cls, model: MLP, config: NetConfig, regression: bool) -> "NetworkPart":
        state = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
        return cls(config, model.n_in, model.n_out, state, regression)

    @property
    def model(self) -> MLP:
        """Built once, in float64: a row's prediction must not depend on which rows share its batch."""
        if self._model is None:
            model = MLP(self.n_in, self.n_out, self.config)
            model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in self.state.items()})
            self._model = model.double().eval()
        return self._model

    def predict(self, X: np.ndarray) -> np.ndarray:
        outs = []
        with torch.inference_mode():
            for i in range(0, len(X), _BATCH):
                out = self.model(torch.from_numpy(np.asarray(X[i : i + _BATCH], dtype=np.float64)))
                outs.append(out[:, 0] if self.regression else out.softmax(-1))
        return torch.cat(outs).numpy() if outs else np.zeros((0,) if self.regression else (0, self.n_out))

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        meta = {"config": self.config.to_json(), "n_in": self.n_in, "n_out": self.n_out, "regression": self.regression}
        return meta, dict(self.state)

    @classmethod
    def from_arrays(cls, meta: dict, arrays: dict[str, np.ndarray]) -> "NetworkPart":
        config = NetConfig.from_json(meta["config"])
        n_in, n_out = int(meta["n_in"]), int(meta["n_out"])
        expected = {k: tuple(v.shape) for k, v in MLP(n_in, n_out, config).state_dict().items()}
        found = {k: tuple(np.shape(v)) for k, v in arrays.items()}
        if found != expected:
            raise ValueError(f"network weights {sorted(found)} do not match the configuration's {sorted(expected)}")
        return cls(config, n_in, n_out, dict(arrays), bool(meta["regression"]))
