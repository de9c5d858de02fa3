"""Networks: an MLP whose space holds RealMLP-TD's ingredients, started from a learned init or at random.

Which start a trial adapts is a search parameter (when a meta-model is loaded), so the
sampler learns whether the learned starts pay on this table. A trial that adapts a
meta-model member's start keeps that member's architecture and draws only how it
trains. Networks train for the configuration's fixed number of steps, never
early-stopped on the rows that score them; trials race on their first fold at rungs
of steps (asynchronous successive halving), so most stop after a few dozen steps and
only the best are trained for longer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna

from metagen.config import ACTIVATIONS, ARCH_FIELDS, NORMS, SCALINGS, SCHEDULES, NetConfig
from metagen.errors import ConfigError
from metagen.families._base import Family, TaskInfo, Trained
from metagen.meta_model import initial_network, member_config
from metagen.serving.network import NetworkPart
from metagen.train import Watch, train_network

MAX_STEPS = 2000
MIN_STEPS = 50
# A learned start needs fewer and gentler steps than a random one.
META_STEPS = 200
META_LR = 1e-3
# Successive-halving rungs in steps: 25, 75, 225, 675; a third of the trials at a rung go on to the next.
RUNG_MIN = 25
RUNG_FACTOR = 3


class MLPFamily(Family):
    name = "mlp"
    views = SCALINGS

    def __init__(self, *, max_steps: int | None = None) -> None:
        super().__init__(max_steps=max_steps or MAX_STEPS)

    def suggest(self, trial: optuna.Trial, info: TaskInfo) -> dict[str, Any]:
        p = self.param
        starts = ["random", *(info.meta.members if info.meta is not None else ())]
        start = trial.suggest_categorical(p("init"), starts) if len(starts) > 1 else "random"
        member = None if start == "random" else member_config(info.meta.members[start][0])
        if member is None:
            arch = dict(
                depth=trial.suggest_int(p("depth"), 1, 4),
                width=trial.suggest_categorical(p("width"), [64, 128, 256, 512]),
                activation=trial.suggest_categorical(p("activation"), list(ACTIVATIONS)),
                norm=trial.suggest_categorical(p("norm"), list(NORMS)),
                residual=trial.suggest_categorical(p("residual"), [False, True]),
                scale_layer=trial.suggest_categorical(p("scale_layer"), [False, True]),
                scaling=trial.suggest_categorical(p("scaling"), list(SCALINGS)),
            )
        else:
            arch = {k: getattr(member, k) for k in ARCH_FIELDS}
        return NetConfig(
            **arch,
            init=start,
            dropout=trial.suggest_float(p("dropout"), 0.0, 0.5),
            lr=trial.suggest_float(p("lr"), 1e-4, 1e-2, log=True),
            weight_decay=trial.suggest_float(p("weight_decay"), 1e-7, 1e-2, log=True),
            batch_size=trial.suggest_categorical(p("batch_size"), [64, 128, 256, 512]),
            steps=trial.suggest_int(p("steps"), min(MIN_STEPS, self.max_steps), self.max_steps, log=True),
            schedule=trial.suggest_categorical(p("schedule"), list(SCHEDULES)),
            label_smoothing=trial.suggest_float(p("label_smoothing"), 0.0, 0.2),
        ).to_json()

    def defaults(self, info: TaskInfo) -> list[dict[str, Any]]:
        """The default network, then one trial per learned start of the meta-model."""
        configs = [NetConfig()]
        if info.meta is not None:
            configs += [member_config(arch, steps=META_STEPS, lr=META_LR) for arch, _ in info.meta.members.values()]
        return [self._clip(c).to_json() for c in configs]

    def _clip(self, config: NetConfig) -> NetConfig:
        return config.with_(steps=int(min(max(config.steps, min(MIN_STEPS, self.max_steps)), self.max_steps)))

    def trial_params(self, config: dict[str, Any]) -> dict[str, Any]:
        net = self._clip(NetConfig.from_json(config))
        params = net.to_json()  # ``init`` too: a search without a meta-model never asks for it
        if net.init != "random":  # a member's architecture is fixed
            params = {k: v for k, v in params.items() if k not in ARCH_FIELDS}
        return {"family": self.name, **{self.param(k): v for k, v in params.items()}}

    def view(self, config: dict[str, Any]) -> str:
        return config["scaling"]

    def summary(self, config: dict[str, Any]) -> str:
        c = NetConfig.from_json(config)
        return f"start={c.init} depth={c.depth} width={c.width} {c.activation} lr={c.lr:.2g} steps={c.steps}"

    def rungs(self, config: dict[str, Any]) -> tuple[int, ...]:
        steps = int(config["steps"])
        return tuple(RUNG_MIN * RUNG_FACTOR**k for k in range(8) if RUNG_MIN * RUNG_FACTOR**k < steps)

    @classmethod
    def pruner(cls) -> optuna.pruners.BasePruner:
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=RUNG_MIN, reduction_factor=RUNG_FACTOR)

    def train(self, X: np.ndarray, y: np.ndarray, config: dict[str, Any], info: TaskInfo, *, seed: int,
              deadline: float | None, watch: Watch | None = None) -> Trained:
        net = NetConfig.from_json(config)
        init = None
        if net.init != "random":
            if info.meta is None or net.init not in info.meta.members:
                raise ConfigError(f"Configuration starts from meta-model member {net.init!r}, which is not loaded.",
                                  "Fit with the meta-model that made the study, or start a new study.")
            arch = info.meta.members[net.init][0]
            init = initial_network(info.meta, net.init, X, y, info.task, info.n_out, net,
                                   steps=arch.inner_steps, seed=seed)
        result = train_network(X, y, info.task, info.n_out, net, seed=seed, deadline=deadline, init=init, watch=watch)
        return Trained(NetworkPart.from_module(result.model, net, info.regression), hit_deadline=result.hit_deadline,
                       details={"steps": result.steps})
