"""Meta-training tasks: support/query splits of real and synthetic tables.

A task subsamples classes, rows and columns of one table, splits the rows into
support and query (stratified for classification), and preprocesses both with a
preprocessor fitted on the support rows only, through the same ``make_table`` and
``fit_preprocessor`` calls as ``metagen fit``. Task ``i`` depends only on the seed and
``i``, so runs are reproducible and workers can share one sequence.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from metagen.errors import ConfigError, DataError
from metagen.preprocess import NumericScaling, fit_preprocessor
from metagen.table import TaskKind, make_table
from task_corpus.cache import ArrayTable, from_source, load_table
from task_corpus.prior import PriorConfig, generate_table
from task_corpus.sources import TableRef

log = logging.getLogger(__name__)

_TARGET = "__target__"
_ATTEMPTS = 10


@dataclass
class Task:
    """One task as plain arrays; features are float32, preprocessed with support statistics only."""

    X_support: np.ndarray
    y_support: np.ndarray  # int64 class codes 0..n_classes-1, or float32 values
    X_query: np.ndarray
    y_query: np.ndarray
    kind: TaskKind
    n_classes: int  # 0 for regression
    name: str
    rows_support: np.ndarray  # row indices into the source table, for provenance and checks
    rows_query: np.ndarray


@dataclass(frozen=True)
class SamplerConfig:
    """How tasks are cut from tables."""

    n_support: int = 256
    """Support rows of a task (fewer when the table is small; rows split in proportion)."""
    n_query: int = 256
    """Query rows of a task."""
    max_columns: int = 64
    """Most feature columns a task keeps (a random subset when the table has more)."""
    min_column_share: float = 0.5
    """A task keeps a random share of the columns between this and 1, for variety."""
    max_classes: int = 10
    """Most classes a task keeps (a random subset of the table's classes)."""
    real_share: float = 0.5
    """Share of tasks cut from real tables; the rest come from the synthetic prior."""
    scaling: NumericScaling = "quantile"
    """Numeric scaling, as ``fit_preprocessor`` takes it."""
    prior: PriorConfig = field(default_factory=PriorConfig)
    """The synthetic prior's parameters."""


def meta_train_tables(tables: Sequence[TableRef], exclude_split: str | None = "dev-eval",
                      ) -> tuple[list[TableRef], list[TableRef]]:
    """(kept, excluded): the guard drops tables of ``exclude_split`` and every table sharing a family with one."""
    if exclude_split is None:
        return list(tables), []
    banned = {r.family for r in tables if r.split == exclude_split and r.family}
    excluded = [r for r in tables if r.split == exclude_split or r.family in banned]
    return [r for r in tables if not (r.split == exclude_split or r.family in banned)], excluded


class TaskSampler:
    """Deterministic tasks from real tables and the prior; tables of ``exclude_split`` never reach it.

    The guard drops every table whose split is ``exclude_split`` (``"dev-eval"`` by default)
    and every table sharing a family with one of those, so copies of a dev-eval table from
    other sources (tagged with its family) are dropped too. Pass the whole PMLB folder so
    the guard knows the families; ``exclude_split=None`` is the explicit override.
    """

    def __init__(
        self,
        tables: Sequence[TableRef],
        config: SamplerConfig = SamplerConfig(),
        seed: int = 0,
        exclude_split: str | None = "dev-eval",
        cache_directory: str | Path | None = None,
    ) -> None:
        self.tables, self.excluded = meta_train_tables(tables, exclude_split)
        if self.excluded:
            log.info("Left out %d table(s) of split %r and their families.", len(self.excluded), exclude_split)
        if config.real_share > 0 and not self.tables:
            raise ConfigError("The sampler has no real tables to draw from.", "Pass tables, or set real_share=0.")
        if not 0.0 <= config.real_share <= 1.0:
            raise ConfigError(f"real_share must lie in [0, 1], not {config.real_share}.")
        self.config = config
        self.seed = seed
        self.cache_directory = cache_directory
        self._loaded: dict[str, ArrayTable | None] = {}

    def is_real(self, index: int) -> bool:
        """Task ``index`` is real when the running count of real tasks steps up: every prefix keeps the ratio."""
        share = self.config.real_share
        return math.floor((index + 1) * share) > math.floor(index * share)

    def sample(self, index: int) -> Task:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
        real = self.is_real(index)
        for _ in range(_ATTEMPTS):
            table = self._draw(rng) if real else self._synthesize(rng)
            if table is None:
                continue
            try:
                return cut_task(table, rng, self.config, None if real else f"{table.name}-{index}")
            except DataError:  # e.g. every sampled column constant on the support rows: draw again
                continue
        raise DataError(f"Could not cut a usable task {index} in {_ATTEMPTS} tries.")

    def _draw(self, rng: np.random.Generator) -> ArrayTable | None:
        """A random real table; None when it cannot be read, remembered so the failure is cheap and the
        outcome of task ``i`` never depends on which tasks came before it."""
        ref = self.tables[int(rng.integers(len(self.tables)))]
        if ref.key not in self._loaded:
            try:
                self._loaded[ref.key] = load_table(ref, self.cache_directory)
            except DataError as exc:
                log.warning("Skipping %s: %s", ref.key, exc)
                self._loaded[ref.key] = None
        return self._loaded[ref.key]

    def _synthesize(self, rng: np.random.Generator) -> ArrayTable:
        """A prior table with exactly the rows a task takes and no more classes than it keeps."""
        config = self.config
        prior = replace(config.prior, max_classes=min(config.prior.max_classes, config.max_classes))
        return from_source(generate_table(int(rng.integers(2**63)), prior, config.n_support + config.n_query))

    def __iter__(self) -> Iterator[Task]:
        index = 0
        while True:
            yield self.sample(index)
            index += 1


def cut_task(table: ArrayTable, rng: np.random.Generator, config: SamplerConfig, name: str | None = None) -> Task:
    """Subsample classes, rows and columns of ``table``, split support/query and preprocess."""
    rows = np.arange(table.n_rows)
    classify = table.task != "regression"
    if classify:
        classes, counts = np.unique(table.y, return_counts=True)
        classes = classes[counts >= 2]  # a class needs a support and a query row
        if len(classes) > config.max_classes:
            classes = rng.choice(classes, config.max_classes, replace=False)
        rows = rows[np.isin(table.y, classes)]
    n_total = min(len(rows), config.n_support + config.n_query)
    n_support = round(n_total * config.n_support / (config.n_support + config.n_query))
    rows = rows[_order(table.y[rows], rng, classify)[:n_total]]
    rows = rows[_order(table.y[rows], rng, classify)]
    support, query = rows[:n_support], rows[n_support:]
    y_support, y_query = table.y[support], table.y[query]
    if classify:
        classes = np.unique(y_support)
        query, y_query = query[np.isin(y_query, classes)], y_query[np.isin(y_query, classes)]
        if len(classes) < 2:
            raise DataError("The support rows hold a single class.")
        relabel = np.zeros(int(table.y.max()) + 1, dtype=np.int64)
        relabel[classes] = rng.permutation(len(classes))  # class identities carry no meaning across tasks
        y_support, y_query = relabel[y_support], relabel[y_query]
    else:
        y_support, y_query = y_support.astype(np.float32), y_query.astype(np.float32)
    names = list(table.features)
    keep = int(rng.integers(math.ceil(config.min_column_share * len(names)), len(names) + 1))
    columns = [names[j] for j in np.sort(rng.choice(len(names), min(keep, config.max_columns), replace=False))]
    kind: TaskKind = "regression" if not classify else "binary" if len(classes) == 2 else "multiclass"
    frame = table.frame(support, columns)
    frame[_TARGET] = y_support
    parsed = make_table(frame, target=_TARGET, task=kind)
    preprocessor = fit_preprocessor(parsed.X, parsed.columns, config.scaling)
    return Task(
        preprocessor.transform(parsed.X), y_support,
        preprocessor.transform(table.frame(query, columns)), y_query,
        kind, len(classes) if classify else 0, name or table.name, support, query,
    )


def _order(y: np.ndarray, rng: np.random.Generator, stratify: bool) -> np.ndarray:
    """A random order of rows whose every prefix is stratified by ``y`` (each class within one row
    of its share): the r-th of a class's n_c rows, in random order, gets the key (r + u) / n_c."""
    perm = rng.permutation(len(y))
    if not stratify:
        return perm
    _, inverse, counts = np.unique(y[perm], return_inverse=True, return_counts=True)
    rank = np.empty(len(y))
    for c in range(len(counts)):
        members = np.flatnonzero(inverse == c)
        rank[members] = (np.arange(len(members)) + rng.random(len(members))) / len(members)
    return perm[np.argsort(rank, kind="stable")]
