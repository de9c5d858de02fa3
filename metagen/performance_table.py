"""The performance table: configurations of every family scored on many meta-train tables, cell by cell.

Every cell is one configuration run on one table exactly as ``fit`` scores a trial
(same views, same validation plan, same code), with its wall-clock time. The table
is sparse by design, as OBOE's is: every table runs every family's defaults plus a
random draw of the pool, stratified by family, so hundreds of configurations meet
hundreds of tables on one CPU. Cells are appended to CSV files (one per worker,
each row with its configuration's JSON) and a build resumes from them.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import optuna
import torch

from metagen.errors import MetaGenError
from metagen.families import FAMILIES, Candidate, TaskInfo
from metagen.fit import FitOptions, prepare_data
from metagen.meta_model import MetaModel
from metagen.search import TRIAL_ERRORS, SearchData, TrialIncomplete, quiet_optuna, run_trial
from metagen.table import Table
from task_corpus import TableRef, load_table

CELL_SECONDS = 60.0
"""A candidate's run on one table stops here; what it reached by then is its score."""
CELL_FIELDS = ("table", "key", "family", "config", "score", "seconds")


@dataclass(frozen=True)
class Preset:
    """How big a build is: what one CPU session affords, or what a larger machine does."""

    per_family: int
    """Configurations per family in the pool: its defaults, then random draws from its space."""
    per_table: int
    """Cells run on each table (its families' defaults included), spread evenly over the families."""
    max_rows: int
    max_steps: int


PRESETS = {
    "session": Preset(per_family=48, per_table=16, max_rows=500, max_steps=200),
    "full": Preset(per_family=128, per_table=96, max_rows=2000, max_steps=1000),
}


def candidate_key(cand: Candidate) -> str:
    """A short stable name of a configuration, so cells find their candidate whatever the pool's order."""
    text = json.dumps(cand.to_json(), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass
class Pool:
    """The configurations a table may run; ``defaults[i]`` says whether a family's default is ``candidates[i]``."""

    candidates: list[Candidate]
    defaults: list[bool]

    def keys(self) -> list[str]:
        return [candidate_key(c) for c in self.candidates]


def candidate_pool(families: tuple[str, ...], per_family: int, info: TaskInfo, seed: int = 0,
                   max_steps: int = 1000) -> Pool:
    """Per family its defaults, then random draws from its space, up to ``per_family`` each."""
    out: list[Candidate] = []
    defaults: list[bool] = []
    for f, name in enumerate(families):
        family = FAMILIES[name](max_steps=max_steps)
        with quiet_optuna():
            study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed + f))
        mine = [Candidate(name, c) for c in family.defaults(info)]
        n_defaults = len(mine)
        tries = 0
        while len(mine) < per_family and tries < 50 * per_family:
            tries += 1
            cand = Candidate(name, family.suggest(study.ask(), info))
            if cand not in mine:
                mine.append(cand)
        mine = mine[:max(per_family, n_defaults)]
        out += mine
        defaults += [i < n_defaults for i in range(len(mine))]
    return Pool(out, defaults)


def cells_for_table(pool: Pool, table: str, per_table: int, seed: int = 0) -> list[int]:
    """The pool indices a table runs: every default, then a random draw per family up to an even share.

    The draw depends only on the table's name and the seed, so every worker and every
    resumed build agrees on it.
    """
    rng = np.random.default_rng([seed, int(hashlib.sha1(table.encode()).hexdigest()[:8], 16)])
    families = list(dict.fromkeys(c.family for c in pool.candidates))
    share = max(1, per_table // max(1, len(families)))
    chosen: list[int] = []
    for name in families:
        mine = [i for i, c in enumerate(pool.candidates) if c.family == name]
        fixed = [i for i in mine if pool.defaults[i]]
        rest = [i for i in mine if not pool.defaults[i]]
        extra = rng.permutation(rest)[:max(0, share - len(fixed))]
        chosen += fixed + sorted(int(i) for i in extra)
    return chosen


def corpus_table(ref: TableRef, max_rows: int, seed: int = 0) -> Table:
    """A corpus table as ``fit`` reads one, its rows subsampled to ``max_rows`` so each cell stays cheap."""
    source = load_table(ref)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(source.n_rows, min(source.n_rows, max_rows), replace=False))
    return source.to_table(rows)


@dataclass
class Cell:
    table: str
    candidate: Candidate
    score: float
    """NaN when the run failed."""
    seconds: float


def read_cells(paths: Iterable[Path]) -> list[Cell]:
    """Every cell of these CSV files (missing files are empty); a cell run twice keeps its first row."""
    seen: dict[tuple[str, str], Cell] = {}
    for path in paths:
        if not Path(path).exists():
            continue
        with _open(Path(path), "r") as fh:
            for row in csv.DictReader(fh):
                key = (row["table"], row["key"])
                try:
                    cell = Cell(row["table"], Candidate(row["family"], json.loads(row["config"])),
                                float(row["score"]), float(row["seconds"]))
                except (TypeError, ValueError):  # a row cut short when its worker was killed: run it again
                    continue
                seen.setdefault(key, cell)
    return list(seen.values())


def _open(path: Path, mode: str) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", newline="")  # type: ignore[return-value]
    return path.open(mode, newline="")


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as fh:
        fh.seek(-1, 2)
        return fh.read(1)


def write_cells(path: Path, cells: Iterable[Cell], append: bool = False) -> None:
    """Cells as CSV rows (gzip when the name ends in .gz), each with its configuration's JSON."""
    new = not (append and path.exists())
    path.parent.mkdir(parents=True, exist_ok=True)
    cut_short = not new and path.suffix != ".gz" and path.stat().st_size > 0 and _last_byte(path) != b"\n"
    with _open(path, "a" if append else "w") as fh:
        writer = csv.writer(fh)
        if new:
            writer.writerow(CELL_FIELDS)
        if cut_short:  # a worker was killed mid-row: end that row, so this one stays whole
            fh.write("\n")
        for cell in cells:
            writer.writerow([cell.table, candidate_key(cell.candidate), cell.candidate.family,
                             json.dumps(cell.candidate.config, sort_keys=True), cell.score, round(cell.seconds, 4)])


def run_cell(data: SearchData, cand: Candidate, seed: int) -> tuple[float, float]:
    """(score, seconds) of one configuration scored as a ``fit`` trial; a failed or overlong run scores NaN."""
    started = time.monotonic()
    score = np.nan
    try:
        result = run_trial(data, FAMILIES[cand.family](), cand.config, seed=seed, deadline=started + CELL_SECONDS)
        score = result.score if np.isfinite(result.score) else np.nan
    except (*TRIAL_ERRORS, TrialIncomplete, MetaGenError):
        pass
    return float(score), time.monotonic() - started


def build_cells(
    tables: Iterable[tuple[str, Callable[[], Table]]],
    pool: Pool,
    per_table: int,
    cells_path: Path,
    *,
    also_read: Iterable[Path] = (),
    seed: int = 0,
    meta: MetaModel | None = None,
    on_cell: Callable[[Cell], None] | None = None,
) -> None:
    """Run every missing cell of these tables, appending each to ``cells_path`` as soon as it is done.

    Cells already in ``cells_path`` or ``also_read`` (other workers' files) are not run
    again; tables are loaded only when one of their cells is missing.
    """
    done = {(c.table, candidate_key(c.candidate)) for c in read_cells([cells_path, *also_read])}
    keys = pool.keys()
    options = FitOptions(test_size=0.0, seed=seed, use_meta=meta is not None)
    for name, load in tables:
        todo = [i for i in cells_for_table(pool, name, per_table, seed) if (name, keys[i]) not in done]
        if not todo:
            continue
        try:
            data = prepare_data(load(), options, meta).search
        except MetaGenError:
            continue
        for i in todo:
            score, seconds = run_cell(data, pool.candidates[i], seed)
            cell = Cell(name, pool.candidates[i], score, seconds)
            write_cells(cells_path, [cell], append=True)
            if on_cell is not None:
                on_cell(cell)


@dataclass
class PerformanceTable:
    """Scores (candidates x tables; NaN where not run or failed), as ``fit`` scores a trial, and fit times."""

    candidates: list[Candidate]
    tables: list[str]
    scores: np.ndarray
    seconds: np.ndarray
    ran: np.ndarray = field(default=None)  # type: ignore[assignment]
    """Which cells were run (a run that failed has ``ran`` and a NaN score); dense when not given."""

    def __post_init__(self) -> None:
        if self.ran is None:
            self.ran = np.ones(self.scores.shape, dtype=bool)

    @classmethod
    def from_cells(cls, cells: list[Cell], candidates: list[Candidate] | None = None) -> "PerformanceTable":
        """The table of these cells; ``candidates`` fixes the rows (cells of other candidates are left out)."""
        if candidates is None:
            candidates = list({candidate_key(c.candidate): c.candidate for c in cells}.values())
        row = {candidate_key(c): i for i, c in enumerate(candidates)}
        tables = list(dict.fromkeys(c.table for c in cells if candidate_key(c.candidate) in row))
        col = {t: j for j, t in enumerate(tables)}
        scores = np.full((len(candidates), len(tables)), np.nan)
        seconds = np.full_like(scores, np.nan)
        ran = np.zeros(scores.shape, dtype=bool)
        for c in cells:
            i = row.get(candidate_key(c.candidate))
            if i is not None:
                j = col[c.table]
                scores[i, j], seconds[i, j], ran[i, j] = c.score, c.seconds, True
        return cls(candidates, tables, scores, seconds, ran)

    def subset(self, columns: np.ndarray) -> "PerformanceTable":
        """The table of these tables (column indices) only."""
        return PerformanceTable(self.candidates, [self.tables[j] for j in columns], self.scores[:, columns],
                                self.seconds[:, columns], self.ran[:, columns])

    def normalised(self) -> np.ndarray:
        """Per table, 0 for the worst run candidate and 1 for the best (failures 0, not run NaN)."""
        s = np.where(self.ran, np.nan_to_num(self.scores, nan=-np.inf), np.nan)
        finite = np.where(np.isfinite(s), s, np.nan)
        with warnings.catch_warnings():  # a table whose every run failed is an all-NaN column
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, hi = np.nanmin(finite, axis=0), np.nanmax(finite, axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        out = np.where(np.isfinite(s), (s - lo) / span, 0.0)
        return np.where(self.ran, np.nan_to_num(out, nan=0.0), np.nan)


TABLE_PREFIX = "performance_table/"


def store_table(meta: MetaModel, table: PerformanceTable, **notes: object) -> None:
    """The table in its compact form inside the meta-model: scores and seconds as tensors (rows: the proposer's
    pool, in order), table names and ``notes`` in the spec."""
    meta.extra = {k: v for k, v in meta.extra.items() if not k.startswith(TABLE_PREFIX)}
    meta.extra.update({TABLE_PREFIX + "scores": torch.tensor(np.where(table.ran, table.scores, np.nan), dtype=torch.float32),
                       TABLE_PREFIX + "seconds": torch.tensor(table.seconds, dtype=torch.float32),
                       TABLE_PREFIX + "ran": torch.tensor(table.ran, dtype=torch.uint8)})
    meta.spec["performance_table"] = {**notes, "table_names": table.tables}


def stored_table(meta: MetaModel, candidates: list[Candidate]) -> PerformanceTable | None:
    """The table ``store_table`` put into ``meta`` (its rows are ``candidates``, the proposer's pool), or None."""
    if TABLE_PREFIX + "scores" not in meta.extra:
        return None
    get = {k[len(TABLE_PREFIX):]: v.numpy() for k, v in meta.extra.items() if k.startswith(TABLE_PREFIX)}
    return PerformanceTable(candidates, list(meta.spec["performance_table"]["table_names"]),
                            get["scores"].astype(float), get["seconds"].astype(float), get["ran"].astype(bool))
