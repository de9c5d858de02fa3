"""The proposer seam: (task, families, budget) -> ranked configurations with a predicted score and time.

Two proposers learn from the performance table. ``PortfolioProposer`` is the static
baseline of auto-sklearn 2.0 and FLAML's zero-shot AutoML: the same greedy portfolio
for every table. ``RankingProposer`` conditions on the task: a small ensemble of
networks scores (task features, configuration) pairs, trained listwise on the
table's normalised scores (ListNet) with a pointwise term so its output reads as a
normalised score, and predicts each cell's fit time beside it; members disagree
where the table is unlike the ones it learned from. ``fit`` tries proposals in order
of expected gain per second of budget.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from metagen.families import Candidate

if TYPE_CHECKING:
    from metagen.meta_model import MetaModel
    from metagen.performance_table import PerformanceTable

MIN_SECONDS = 0.05
"""Below this a predicted fit time says nothing more: every cell costs some overhead."""
TRIAL_OVERHEAD_S = 0.3
"""What a trial costs the search beyond training (storage, pruning, the ensemble's pool): a nearly free
configuration still takes a trial's slot."""


@dataclass
class Proposal:
    candidate: Candidate
    score: float
    """Predicted normalised score: 1 is the best of the configurations a table ran, 0 the worst."""
    seconds: float
    """Predicted seconds of the trial (every fold) on this table."""
    spread: float
    """How unsure the prediction is: the spread of ``samples``."""
    samples: np.ndarray = field(repr=False)
    """Joint draws of the score (one per ensemble member, or per meta-train table), aligned across proposals,
    so that configurations a draw rates alike count as alike."""


class Proposer(ABC):
    """Ranks a pool of configurations for a table described by ``task_features``."""

    kind: ClassVar[str]

    def __init__(self, pool: list[Candidate], rows: int) -> None:
        self.pool = pool
        self.rows = rows
        """Rows of the performance table's tables: fit times are scaled from there."""

    @abstractmethod
    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(draws x pool) normalised scores, and per pool configuration its seconds at ``rows`` rows."""

    def order(self, score: np.ndarray) -> np.ndarray:
        """Pool indices, the best first."""
        return np.argsort(-score, kind="stable")

    def propose(self, features: np.ndarray, families: tuple[str, ...], n_rows: int, folds: int = 5) -> list[Proposal]:
        """Every configuration of ``families`` in the pool, the best first.

        Fit times scale with the rows beyond the table's ``rows`` and with the folds that
        the table's validation plan runs (the table's cells ran five).
        """
        samples, seconds = self.predict(features)
        score, spread = samples.mean(0), samples.std(0)
        scale = max(1.0, n_rows / self.rows) * folds / 5
        return [Proposal(self.pool[i], float(score[i]), max(MIN_SECONDS, float(seconds[i]) * scale), float(spread[i]),
                         samples[:, i]) for i in self.order(score) if self.pool[i].family in families]

    @abstractmethod
    def to_json(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(spec, tensors) for the meta-model file."""

    @classmethod
    @abstractmethod
    def from_json(cls, spec: dict, tensors: dict[str, torch.Tensor]) -> "Proposer":
        """The proposer ``to_json`` wrote."""


def order_by_gain(proposals: list[Proposal], budget: float, limit: int, share: float = 0.5) -> list[Proposal]:
    """At most ``limit`` proposals, in order of expected gain per second, within ``share`` of ``budget``.

    The gain of a proposal is its expected improvement over the best queued so far, averaged
    over the joint draws: a near copy of a queued configuration gains little, however cheap.
    Once every draw is covered, the best predicted come next. A proposal expected to take
    longer than the budget left for proposals is skipped, so a 5 s budget tries what can pay in 5 s.
    """
    left, chosen, rest = budget * share, [], list(proposals)
    best = np.zeros_like(proposals[0].samples) if proposals else np.zeros(1)
    while rest and len(chosen) < limit:
        rates = [float(np.mean(np.maximum(p.samples - best, 0.0))) / (p.seconds + TRIAL_OVERHEAD_S)
                 if p.seconds <= left else -1.0 for p in rest]
        i = int(np.argmax(rates))
        if rates[i] < 0:  # nothing left fits
            break
        if rates[i] == 0:  # every draw is covered already: the best predicted of what fits comes next
            i = max((k for k, r in enumerate(rates) if r == 0), key=lambda k: rest[k].score)
        pick = rest.pop(i)
        chosen.append(pick)
        left -= pick.seconds
        best = np.maximum(best, pick.samples)
    return chosen


# ----- the static portfolio ------------------------------------------------------------------------------------


def imputed(normalised: np.ndarray) -> np.ndarray:
    """Cells a table did not run take the configuration's mean over the tables that ran it (0 if none did)."""
    with np.errstate(invalid="ignore"):
        seen = np.isfinite(normalised)
        mean = np.where(seen.any(1), np.nansum(normalised, 1) / np.maximum(seen.sum(1), 1), 0.0)
    return np.where(seen, normalised, mean[:, None])


def greedy_portfolio(normalised: np.ndarray, size: int) -> list[int]:
    """Indices of ``size`` configurations whose best-of on each table has the highest mean."""
    normalised = imputed(normalised)
    chosen: list[int] = []
    best = np.zeros(normalised.shape[1])
    for _ in range(min(size, len(normalised))):
        gains = [np.mean(np.maximum(best, row)) if i not in chosen else -np.inf for i, row in enumerate(normalised)]
        i = int(np.argmax(gains))
        chosen.append(i)
        best = np.maximum(best, normalised[i])
    return chosen


class PortfolioProposer(Proposer):
    """The same ranking for every table: the greedy portfolio first, then the rest by mean normalised score."""

    kind = "portfolio"

    def __init__(self, pool: list[Candidate], rows: int, samples: np.ndarray, seconds: np.ndarray,
                 portfolio: list[int]) -> None:
        super().__init__(pool, rows)
        self.samples, self.seconds, self.portfolio = samples, seconds, portfolio

    @classmethod
    def train(cls, table: PerformanceTable, rows: int, size: int = 8) -> "PortfolioProposer":
        """Its draws are the meta-train tables themselves: each one's normalised scores (gaps filled)."""
        norm = table.normalised()
        with warnings.catch_warnings():  # configurations no table ran
            warnings.simplefilter("ignore", RuntimeWarning)
            seconds = np.array([np.nanmedian(r) if np.isfinite(r).any() else np.nanmedian(table.seconds)
                                for r in table.seconds])
        return cls(table.candidates, rows, imputed(norm).T, seconds, greedy_portfolio(norm, size))

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.samples, self.seconds

    def order(self, score: np.ndarray) -> np.ndarray:
        rest = [int(i) for i in super().order(score) if i not in self.portfolio]
        return np.array(self.portfolio + rest, dtype=int)

    def to_json(self) -> tuple[dict, dict[str, torch.Tensor]]:
        return ({"kind": self.kind, "rows": self.rows, "pool": [c.to_json() for c in self.pool],
                 "portfolio": self.portfolio},
                {"samples": torch.tensor(self.samples), "seconds": torch.tensor(self.seconds)})

    @classmethod
    def from_json(cls, spec: dict, tensors: dict[str, torch.Tensor]) -> "PortfolioProposer":
        return cls([Candidate.from_json(c) for c in spec["pool"]], int(spec["rows"]), tensors["samples"].numpy(),
                   tensors["seconds"].numpy(), [int(i) for i in spec["portfolio"]])


# ----- the task-conditioned ranker -----------------------------------------------------------------------------


@dataclass
class ConfigEncoder:
    """Configurations as vectors: the family one-hot, then each (family, parameter), numeric or one-hot."""

    families: list[str]
    columns: list[dict[str, Any]]

    @classmethod
    def fit(cls, pool: list[Candidate]) -> "ConfigEncoder":
        families = list(dict.fromkeys(c.family for c in pool))
        columns: list[dict[str, Any]] = []
        for family in families:
            keys = list(dict.fromkeys(k for c in pool if c.family == family for k in c.config))
            for key in keys:
                values = [c.config[key] for c in pool if c.family == family and key in c.config]
                if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                    x = np.asarray(values, dtype=float)
                    log = bool(x.min() > 0 and x.max() / x.min() > 20)
                    x = np.log(x) if log else x
                    columns.append({"family": family, "key": key, "log": log, "mean": float(x.mean()),
                                    "std": float(x.std()) or 1.0})
                else:
                    for v in dict.fromkeys(str(v) for v in values):
                        columns.append({"family": family, "key": key, "value": v})
        return cls(families, columns)

    @property
    def width(self) -> int:
        return len(self.families) + len(self.columns)

    def encode(self, pool: list[Candidate]) -> np.ndarray:
        out = np.zeros((len(pool), self.width))
        for i, c in enumerate(pool):
            if c.family in self.families:
                out[i, self.families.index(c.family)] = 1.0
            for j, col in enumerate(self.columns, start=len(self.families)):
                if col["family"] != c.family or col["key"] not in c.config:
                    continue
                v = c.config[col["key"]]
                if "value" in col:
                    out[i, j] = float(str(v) == col["value"])
                elif isinstance(v, (int, float)) and not isinstance(v, bool) and (v > 0 or not col["log"]):
                    out[i, j] = ((math.log(v) if col["log"] else v) - col["mean"]) / col["std"]
        return out

    def to_json(self) -> dict:
        return {"families": self.families, "columns": self.columns}


HIDDEN = 64
MEMBERS = 5
LISTNET_TEMPERATURE = 0.1
PARAMS = ("w1", "b1", "w2", "b2", "w3", "b3")


def _init_members(n_in: int, seed: int) -> dict[str, torch.Tensor]:
    """The ensemble's weights stacked on a first axis of ``MEMBERS``, so all members train in one pass."""
    g = torch.Generator().manual_seed(seed)

    def layer(i: int, o: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(MEMBERS, i, o, generator=g) * math.sqrt(2.0 / i), torch.zeros(MEMBERS, 1, o)

    (w1, b1), (w2, b2), (w3, b3) = layer(n_in, HIDDEN), layer(HIDDEN, HIDDEN), layer(HIDDEN, 2)
    return {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "w3": w3 * 0.1, "b3": b3}


def _forward(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """(members, ..., 2): each member's score logit and standardised log fit time for the rows of ``x``."""
    flat = x.reshape(1, -1, x.shape[-1])
    h = torch.relu(flat @ p["w1"] + p["b1"])
    h = torch.relu(h @ p["w2"] + p["b2"])
    return (h @ p["w3"] + p["b3"]).reshape(len(p["w1"]), *x.shape[:-1], 2)


class RankingProposer(Proposer):
    """Scores (task, configuration) pairs with an ensemble of small networks trained as a ranking."""

    kind = "ranking"

    def __init__(self, pool: list[Candidate], rows: int, encoder: ConfigEncoder, feature_mean: np.ndarray,
                 feature_std: np.ndarray, time_mean: float, time_std: float,
                 members: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__(pool, rows)
        self.encoder, self.members = encoder, members or {}
        self.feature_mean, self.feature_std = feature_mean, feature_std
        self.time_mean, self.time_std = time_mean, time_std
        self._configs = torch.tensor(encoder.encode(pool), dtype=torch.float32)

    def _inputs(self, features: np.ndarray) -> torch.Tensor:
        task = torch.tensor(np.clip((features - self.feature_mean) / self.feature_std, -5, 5), dtype=torch.float32)
        return torch.cat([task.expand(len(self.pool), -1), self._configs], dim=1)

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = self._inputs(features)
        with torch.no_grad():
            out = _forward(self.members, x)  # (members, pool, 2)
        scores = torch.sigmoid(out[..., 0])
        seconds = torch.exp(out[..., 1].mean(0) * self.time_std + self.time_mean)
        return scores.numpy(), seconds.numpy()

    @classmethod
    def train(cls, table: PerformanceTable, features: np.ndarray, rows: int, seed: int = 0, epochs: int = 400,
              weight_decay: float = 1e-2) -> "RankingProposer":
        """Fit on every run cell of ``table``; ``features`` holds one row of task features per table."""
        encoder = ConfigEncoder.fit(table.candidates)
        mean, std = features.mean(0), features.std(0)
        std = np.where(std > 1e-8, std, 1.0)
        norm = table.normalised()
        with np.errstate(divide="ignore"):
            log_t = np.log(np.maximum(table.seconds, 1e-3))
        seen_t = table.ran & np.isfinite(log_t)
        t_mean, t_std = float(log_t[seen_t].mean()), float(log_t[seen_t].std()) or 1.0
        proposer = cls(table.candidates, rows, encoder, mean, std, t_mean, t_std)
        # (tables, cells, inputs) with masks: every table is one list of the configurations it ran.
        ran = [np.flatnonzero(table.ran[:, j]) for j in range(len(table.tables))]
        width = max(1, max(len(r) for r in ran))
        index = np.zeros((len(ran), width), dtype=int)
        mask_np = np.zeros((len(ran), width), dtype=bool)
        for j, r in enumerate(ran):
            index[j, :len(r)], mask_np[j, :len(r)] = r, True
        cols = np.arange(len(ran))[:, None]
        task = torch.tensor(np.clip((features - mean) / std, -5, 5), dtype=torch.float32)
        x = torch.cat([task[:, None, :].expand(-1, width, -1), proposer._configs[torch.from_numpy(index)]], dim=2)
        mask = torch.from_numpy(mask_np)
        target = torch.tensor(np.nan_to_num(norm.T[cols, index], nan=0.0), dtype=torch.float32)
        time_target = torch.tensor(np.nan_to_num((log_t.T[cols, index] - t_mean) / t_std, nan=0.0),
                                   dtype=torch.float32)
        time_mask = torch.from_numpy(seen_t.T[cols, index] & mask_np)
        rng = np.random.default_rng(seed)
        # Each member sees its own bootstrap of the tables, so members disagree where tables are few.
        weight = torch.tensor(np.stack([np.bincount(rng.integers(0, len(task), len(task)), minlength=len(task))
                                        for _ in range(MEMBERS)]), dtype=torch.float32)
        params = {k: v.requires_grad_() for k, v in _init_members(x.shape[2], seed).items()}
        opt = torch.optim.AdamW(params.values(), lr=3e-3, weight_decay=weight_decay)
        for _ in range(epochs):
            out = _forward(params, x)
            loss = _ranking_loss(out[..., 0], target, mask, weight)
            loss = loss + _masked_mean((out[..., 1] - time_target) ** 2, time_mask, weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
        proposer.members = {k: v.detach() for k, v in params.items()}
        return proposer

    def to_json(self) -> tuple[dict, dict[str, torch.Tensor]]:
        spec = {"kind": self.kind, "rows": self.rows, "pool": [c.to_json() for c in self.pool],
                "encoder": self.encoder.to_json(), "time_mean": self.time_mean, "time_std": self.time_std,
                "members": MEMBERS}
        tensors = {"feature_mean": torch.tensor(self.feature_mean), "feature_std": torch.tensor(self.feature_std)}
        return spec, {**tensors, **{f"members.{k}": v for k, v in self.members.items()}}

    @classmethod
    def from_json(cls, spec: dict, tensors: dict[str, torch.Tensor]) -> "RankingProposer":
        members = {k: tensors[f"members.{k}"].float() for k in PARAMS}
        encoder = ConfigEncoder(list(spec["encoder"]["families"]), list(spec["encoder"]["columns"]))
        return cls([Candidate.from_json(c) for c in spec["pool"]], int(spec["rows"]), encoder,
                   tensors["feature_mean"].numpy(), tensors["feature_std"].numpy(), float(spec["time_mean"]),
                   float(spec["time_std"]), members)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Summed over members (each learns apart): its table-weighted mean over the run cells; ``values`` (M, T, C)."""
    w = mask * weight[:, :, None]
    return ((values * w).sum((1, 2)) / w.sum((1, 2)).clamp_min(1.0)).sum()


def _ranking_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """ListNet over each table's run configurations, plus squared error so sigmoid(logit) reads as the score."""
    neg = torch.finfo(logits.dtype).min
    want = torch.softmax(torch.where(mask, target / LISTNET_TEMPERATURE, neg), dim=1)
    log_p = torch.log_softmax(torch.where(mask, logits, neg), dim=-1)
    listwise = -(want * torch.where(mask, log_p, 0.0)).sum(-1)  # (M, T)
    listwise = ((listwise * weight).sum(1) / weight.sum(1).clamp_min(1.0)).sum()
    return listwise + 4.0 * _masked_mean((torch.sigmoid(logits) - target) ** 2, mask, weight)


# ----- reading and writing -------------------------------------------------------------------------------------

PROPOSERS: dict[str, type[Proposer]] = {cls.kind: cls for cls in (PortfolioProposer, RankingProposer)}
PREFIX = "proposer/"


def load_proposer(meta: "MetaModel | None") -> Proposer | None:
    """The proposer stored in a meta-model file by ``metagen meta-portfolio``, or None."""
    if meta is None or "proposer" not in meta.spec:
        return None
    spec = meta.spec["proposer"]
    tensors = {k[len(PREFIX):]: v for k, v in meta.extra.items() if k.startswith(PREFIX)}
    return PROPOSERS[spec["kind"]].from_json(spec, tensors)


def store_proposer(meta: "MetaModel", proposer: Proposer, **notes: Any) -> None:
    """Put ``proposer`` into ``meta`` (replacing any), with ``notes`` (how it was chosen) beside its spec."""
    spec, tensors = proposer.to_json()
    meta.spec["proposer"] = {**spec, **notes}
    meta.extra = {k: v for k, v in meta.extra.items() if not k.startswith(PREFIX)}
    meta.extra.update({PREFIX + k: v for k, v in tensors.items()})


# ----- which proposer wins on tables it never saw ---------------------------------------------------------------

TOP_K = 5


def choices(proposer: Proposer, features: np.ndarray, available: np.ndarray) -> list[int]:
    """The proposer's ranking of the pool, restricted to the indices in ``available``."""
    keep = set(int(i) for i in available)
    return [int(i) for i in proposer.order(proposer.predict(features)[0].mean(0)) if int(i) in keep]


def held_out_rows(table: "PerformanceTable", features: np.ndarray, train_tables: np.ndarray,
                  test_tables: np.ndarray, default: int, rows: int, seed: int = 0) -> list[dict]:
    """Per test table, normalised scores of what each strategy picks among the configurations that table ran.

    Both proposers learn from ``train_tables`` only; the test tables' cells are what they
    are scored on (1 is the best configuration the table ran): the learned ranker's top-1
    and best-of-top-k, the static portfolio's, the default alone and k random configurations.
    """
    train = table.subset(train_tables)
    ranking = RankingProposer.train(train, features[train_tables], rows, seed=seed)
    portfolio = PortfolioProposer.train(train, rows)
    norm = table.normalised()
    rng = np.random.default_rng(seed)
    out = []
    for j in test_tables:
        available = np.flatnonzero(table.ran[:, j])
        got = np.nan_to_num(norm[:, j], nan=0.0)
        learned = choices(ranking, features[j], available)
        static = choices(portfolio, features[j], available)
        drawn = [rng.choice(available, min(TOP_K, len(available)), replace=False) for _ in range(20)]
        out.append({
            "table": table.tables[j], "configs": len(available),
            "ranking_top1": got[learned[0]], f"ranking_top{TOP_K}": got[learned[:TOP_K]].max(),
            "portfolio_top1": got[static[0]], f"portfolio_top{TOP_K}": got[static[:TOP_K]].max(),
            "default": got[default] if table.ran[default, j] else np.nan,
            "random_top1": float(np.mean([got[d[0]] for d in drawn])),
            f"random_top{TOP_K}": float(np.mean([got[d].max() for d in drawn])),
        })
    return out


def cross_validate(table: "PerformanceTable", features: np.ndarray, default: int, rows: int, folds: int = 5,
                   seed: int = 0) -> list[dict]:
    """``held_out_rows`` for every table, each scored by proposers trained on the other folds' tables."""
    order = np.random.default_rng(seed).permutation(len(table.tables))
    rows_out: list[dict] = []
    for f in range(folds):
        test = order[f::folds]
        rows_out += held_out_rows(table, features, np.setdiff1d(order, test), test, default, rows, seed + f)
    return rows_out
