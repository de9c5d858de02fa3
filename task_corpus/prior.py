"""A synthetic prior over tables that runs anywhere, seeded and reproducible.

Each table comes from one of three random mechanisms, a structural causal model
(a random DAG of nonlinear nodes), a random MLP, or a random tree ensemble, that
gives features and a latent score. The score becomes a regression target, or classes
cut at random (possibly imbalanced) quantiles. The features then get the messiness of
real tables: categorical columns, heavy tails, irrelevant and redundant columns and
missing values. Tables come out as a :class:`SourceTable`, so they take the same path
through ``make_table`` and preprocessing as real ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from metagen.table import TaskKind
from task_corpus.sources import SourceTable

MECHANISMS = ("scm", "mlp", "trees")
_ACTIVATIONS = (np.tanh, np.sin, np.abs, lambda z: np.maximum(z, 0.0), lambda z: z * z / 3.0, lambda z: 1 / (1 + np.exp(-3 * z)))


@dataclass(frozen=True)
class PriorConfig:
    """What a synthetic table may look like; every range is sampled uniformly per table."""

    n_rows: tuple[int, int] = (128, 2048)
    """Rows per table (the sampler asks for exactly the rows a task needs)."""
    n_informative: tuple[int, int] = (2, 24)
    """Features the mechanism produces before extra columns are added."""
    classification_share: float = 0.65
    """Share of tables that are classification; the rest are regression."""
    binary_share: float = 0.4
    """Share of classification tables that have exactly two classes."""
    max_classes: int = 60
    """Most classes of a multiclass table; class counts are log-uniform in [3, max_classes]."""
    class_balance: tuple[float, float] = (0.3, 10.0)
    """Dirichlet concentration of class proportions (log-uniform); small means imbalanced."""
    label_noise: tuple[float, float] = (0.0, 0.1)
    """Share of class labels replaced by random ones."""
    target_noise: tuple[float, float] = (0.0, 0.5)
    """Std of Gaussian noise added to a standardised regression target."""
    mechanism_weights: tuple[float, float, float] = (0.4, 0.3, 0.3)
    """Probabilities of the SCM, MLP and tree-ensemble mechanisms, in ``MECHANISMS`` order."""
    categorical_share: tuple[float, float] = (0.0, 0.4)
    """Share of feature columns turned into categories (shuffled labels, not ordinal codes)."""
    max_categories: int = 20
    """Most levels of a categorical column (at least two)."""
    heavy_tail_share: tuple[float, float] = (0.0, 0.4)
    """Share of numeric columns given heavy tails (an exponential stretch)."""
    irrelevant_share: tuple[float, float] = (0.0, 0.5)
    """Pure-noise columns added, as a share of the informative ones."""
    redundant_share: tuple[float, float] = (0.0, 0.3)
    """Noisy linear mixes of two existing columns added, as a share of the informative ones."""
    missing_table_share: float = 0.3
    """Share of tables that have missing values at all."""
    missing_rate: tuple[float, float] = (0.01, 0.2)
    """Share of feature cells missing (completely at random) in a table that has any."""


def generate_table(seed: int | np.random.SeedSequence, config: PriorConfig = PriorConfig(),
                   n_rows: int | None = None) -> SourceTable:
    """One synthetic table; the same seed and config always give the same table."""
    rng = np.random.default_rng(seed)
    n = n_rows if n_rows is not None else int(rng.integers(config.n_rows[0], config.n_rows[1] + 1))
    d = int(rng.integers(config.n_informative[0], config.n_informative[1] + 1))
    mechanism = MECHANISMS[int(rng.choice(len(MECHANISMS), p=np.asarray(config.mechanism_weights) / sum(config.mechanism_weights)))]
    X, score = {"scm": _scm, "mlp": _mlp, "trees": _trees}[mechanism](rng, n, d)
    score = _standardise(score)
    if rng.random() < config.classification_share:
        y, task = _classes(rng, score, config)
    else:
        y, task = score + rng.normal(0.0, _uniform(rng, config.target_noise), n), "regression"
    data = _messy_features(rng, X, config)
    label = f"prior-{mechanism}-{task}"
    data["target"] = y
    return SourceTable(label, "synthetic", data, "target", task)


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-9)


def _noise(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Root causes: normal, uniform or Laplace, so inputs are not all Gaussian."""
    kind = rng.integers(3)
    if kind == 0:
        return rng.normal(size=(n, d))
    if kind == 1:
        return rng.uniform(-1.7, 1.7, size=(n, d))
    return rng.laplace(size=(n, d))


def _scm(rng: np.random.Generator, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """A random DAG in topological order; features and the target are nodes, so some
    features are causes of the target and some are its effects."""
    n_nodes = d + 1 + int(rng.integers(0, d + 1))
    nodes = np.empty((n, n_nodes))
    root_noise = _noise(rng, n, n_nodes)
    edge_p = rng.uniform(0.2, 0.7)
    noise_std = rng.uniform(0.05, 0.5)
    for j in range(n_nodes):
        parents = np.flatnonzero(rng.random(j) < edge_p)
        if parents.size == 0:
            nodes[:, j] = root_noise[:, j]
            continue
        z = _standardise(nodes[:, parents] @ rng.normal(size=parents.size))
        act = _ACTIVATIONS[int(rng.integers(len(_ACTIVATIONS)))]
        nodes[:, j] = act(z) + noise_std * rng.normal(size=n)
    # The target is a non-root node in the later half; features are other nodes.
    target = int(rng.integers(n_nodes // 2, n_nodes))
    others = np.delete(np.arange(n_nodes), target)
    features = rng.choice(others, size=d, replace=False)
    return nodes[:, features], nodes[:, target]


def _mlp(rng: np.random.Generator, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Features through a random MLP with a random activation; its output is the score."""
    X = _noise(rng, n, d)
    h = X
    act = _ACTIVATIONS[int(rng.integers(len(_ACTIVATIONS)))]
    for _ in range(int(rng.integers(1, 4))):
        width = int(rng.integers(8, 65))
        h = act(_standardise(h @ rng.normal(size=(h.shape[1], width)) / np.sqrt(h.shape[1])))
    return X, h @ rng.normal(size=h.shape[1])


def _trees(rng: np.random.Generator, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """A sum of random axis-aligned trees: steps and interactions a linear model misses."""
    X = _noise(rng, n, d)
    score = np.zeros(n)
    for _ in range(int(rng.integers(3, 30))):
        depth = int(rng.integers(1, 6))
        leaf = np.zeros(n, dtype=np.int64)
        for _ in range(depth):
            feature = rng.integers(d, size=2**depth)[leaf]
            threshold = rng.normal(0.0, 0.8, size=2**depth)[leaf]
            leaf = 2 * leaf + (X[np.arange(n), feature] > threshold)
        score += rng.normal(size=2**depth)[leaf]
    return X, score


def _classes(rng: np.random.Generator, score: np.ndarray, config: PriorConfig) -> tuple[np.ndarray, TaskKind]:
    """Cut the score at random quantiles (Dirichlet proportions), shuffle labels, add label noise."""
    if rng.random() < config.binary_share or config.max_classes < 3:
        k = 2
    else:
        k = int(np.exp(rng.uniform(np.log(3), np.log(config.max_classes + 1))))
    alpha = np.exp(rng.uniform(*np.log(config.class_balance)))
    share = rng.dirichlet(np.full(k, alpha))
    share = np.maximum(share, 2.0 / len(score))  # every class keeps a few rows
    cuts = np.quantile(score, np.cumsum(share / share.sum())[:-1])
    y = rng.permutation(k)[np.searchsorted(cuts, score)]
    flip = rng.random(len(y)) < _uniform(rng, config.label_noise)
    y[flip] = rng.integers(k, size=int(flip.sum()))
    return y.astype(np.int64), "binary" if k == 2 else "multiclass"


def _messy_features(rng: np.random.Generator, X: np.ndarray, config: PriorConfig) -> pd.DataFrame:
    n, d = X.shape
    extra = [_noise(rng, n, int(round(d * _uniform(rng, config.irrelevant_share))))]
    n_redundant = int(round(d * _uniform(rng, config.redundant_share)))
    for _ in range(n_redundant):
        i, j = rng.choice(d, size=2)
        mix = rng.normal() * X[:, i] + rng.normal() * X[:, j] + 0.1 * rng.normal(size=n)
        extra.append(mix[:, None])
    X = np.concatenate([X, *extra], axis=1)
    X = X[:, rng.permutation(X.shape[1])]
    # Arbitrary units: real columns are neither centred nor unit-scaled.
    X = X * np.exp(rng.normal(0.0, 2.0, X.shape[1])) + rng.normal(0.0, 10.0, X.shape[1])
    columns: dict[str, np.ndarray] = {}
    heavy_p = _uniform(rng, config.heavy_tail_share)
    cat_p = _uniform(rng, config.categorical_share)
    missing_rate = _uniform(rng, config.missing_rate) if rng.random() < config.missing_table_share else 0.0
    for j in range(X.shape[1]):
        x = X[:, j]
        if rng.random() < cat_p:
            values = _categorical(rng, x, config.max_categories)
        else:
            if rng.random() < heavy_p:
                z = _standardise(x)
                x = np.sign(z) * np.expm1(rng.uniform(1.0, 3.0) * np.abs(z))
            values = x.astype(np.float64)
        if missing_rate:
            values = values.copy()
            values[rng.random(n) < missing_rate] = None if values.dtype == object else np.nan
        columns[f"x{j}"] = values
    return pd.DataFrame(columns)


def _categorical(rng: np.random.Generator, x: np.ndarray, max_categories: int) -> np.ndarray:
    """Quantile bins of a column, named by shuffled labels so their order carries no meaning."""
    k = int(rng.integers(2, max(2, max_categories) + 1))
    cuts = np.quantile(x, np.sort(rng.uniform(0, 1, k - 1)))
    codes = np.searchsorted(cuts, x)
    names = np.array([f"c{i}" for i in rng.permutation(k)], dtype=object)
    return names[codes]
