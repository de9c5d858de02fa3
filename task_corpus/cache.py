"""Parsed tables as plain arrays, kept on disk as ``.npz`` so meta-training never re-parses CSV.

A table is read and schema-checked once with ``metagen.table.make_table`` (as ``metagen
fit`` does); its used feature columns keep their dtypes, so a frame rebuilt from the
arrays goes through preprocessing exactly as the original frame would.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metagen.table import Table, TaskKind, make_table
from task_corpus.sources import SourceTable, TableRef

CACHE_ENV = "METAGEN_CACHE"
_FORMAT = 1  # bump when the file layout changes; old files are then ignored


@dataclass
class ArrayTable:
    """A table ready for sampling: feature columns as arrays, the target encoded as ``fit`` encodes it."""

    name: str
    source: str
    task: TaskKind
    features: dict[str, np.ndarray]  # int/float/bool arrays, or object arrays of str with None for missing
    y: np.ndarray  # class codes 0..n_classes-1, or float64 values for regression
    n_classes: int  # 0 for regression
    split: str | None = None
    family: str | None = None

    @property
    def n_rows(self) -> int:
        return len(self.y)

    @property
    def n_columns(self) -> int:
        return len(self.features)

    def frame(self, rows: np.ndarray, columns: list[str]) -> pd.DataFrame:
        """The given rows and columns as a DataFrame, as a CSV reader would have given them."""
        return pd.DataFrame({c: self.features[c][rows] for c in columns}, copy=False)

    def to_table(self, rows: np.ndarray | None = None) -> Table:
        """The given rows (default: all) as ``metagen fit`` would parse them, target included."""
        rows = np.arange(self.n_rows) if rows is None else rows
        frame = self.frame(rows, list(self.features)).assign(__target__=self.y[rows])
        return make_table(frame, target="__target__", task=self.task)


def cache_dir() -> Path:
    """``$METAGEN_CACHE`` if set, else ``~/.cache/metagen/corpus``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "metagen" / "corpus")


def from_source(table: SourceTable) -> ArrayTable:
    """Run the table through ``make_table`` once and keep the columns it would use."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropped unlabelled rows are expected in public tables
        parsed = make_table(table.data, target=table.target, task=table.task)
    features = {c.name: _plain_column(parsed.X[c.name]) for c in parsed.columns if c.used}
    n_classes = 0 if parsed.task == "regression" else len(parsed.classes or [])
    return ArrayTable(table.name, table.source, parsed.task, features, parsed.y, n_classes, table.split, table.family)


def _plain_column(col: pd.Series) -> np.ndarray:
    if pd.api.types.is_bool_dtype(col) or (pd.api.types.is_numeric_dtype(col) and col.dtype != object):
        return col.to_numpy()
    return np.array([None if pd.isna(v) else str(v) for v in col], dtype=object)


def load_table(ref: TableRef, directory: str | Path | None = None) -> ArrayTable:
    """The table from the cache, parsing and caching it first if this version is not there yet."""
    path = _cache_path(ref, Path(directory) if directory is not None else cache_dir())
    if path.is_file():
        table = _read(path)
    else:
        table = from_source(ref.load())
        _write(table, path)
    table.name, table.split, table.family = ref.name, ref.split, ref.family  # the ref is authoritative
    return table


def _cache_path(ref: TableRef, directory: Path) -> Path:
    digest = hashlib.sha1(f"{_FORMAT}|{ref.key}|{ref.version}".encode()).hexdigest()[:16]
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in ref.name)
    return directory / ref.source / f"{safe}-{digest}.npz"


def _write(table: ArrayTable, path: Path) -> None:
    arrays: dict[str, np.ndarray] = {"y": table.y}
    for i, values in enumerate(table.features.values()):
        if values.dtype == object:
            missing = np.array([v is None for v in values], dtype=bool)
            arrays[f"s{i}"] = np.array(["" if v is None else v for v in values], dtype=str)
            arrays[f"m{i}"] = missing
        else:
            arrays[f"n{i}"] = values
    meta = {"name": table.name, "source": table.source, "task": table.task, "n_classes": table.n_classes,
            "columns": list(table.features)}
    arrays["meta"] = np.array(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # readers never see a half-written file


def _read(path: Path) -> ArrayTable:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        features = {}
        for i, name in enumerate(meta["columns"]):
            if f"n{i}" in data:
                features[name] = data[f"n{i}"]
            else:
                values = data[f"s{i}"].astype(object)
                values[data[f"m{i}"]] = None
                features[name] = values
        y = data["y"]
    return ArrayTable(meta["name"], meta["source"], meta["task"], features, y, meta["n_classes"])
