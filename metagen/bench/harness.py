"""What every ``metagen bench`` command shares: suites, the train/test split, run records,
the summary (table, JSON) and the anytime plot.

A record is one run (dataset, method, budget, seed) with plain field names, so the CSV
written as runs finish, the JSON and the summary all read the same rows.
"""

from __future__ import annotations

import csv
import functools
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from metagen.errors import DataError
from metagen.extras import pyplot
from task_corpus import ArrayTable, TableRef, generate_table, load_table, resolve_source

SYNTHETIC_TABLES = 8


# --- suites ------------------------------------------------------------------------------


def suite_tables(suite: str, split: str | None = None) -> list[TableRef]:
    """``sklearn`` | ``synthetic`` | a folder of PMLB-format tables, optionally one manifest split."""
    if suite == "synthetic":
        # seeds 0..7 of the prior; bump the version when the prior changes, as it keys the table cache
        return [TableRef(f"synthetic-{i}", "synthetic", functools.partial(generate_table, i), version="1")
                for i in range(SYNTHETIC_TABLES)]
    refs = resolve_source(suite)
    if split is not None:
        refs = [r for r in refs if r.split == split]
        if not refs:
            raise DataError(f"No tables of split {split!r} in {suite}.", "Check the manifest's split column.")
    return refs


def find_table(suite: str, split: str | None, name: str) -> ArrayTable:
    """One table of a suite, parsed once and cached by task_corpus (workers look tables up by name)."""
    for ref in suite_tables(suite, split):
        if ref.name == name:
            return load_table(ref)
    raise DataError(f"No table {name!r} in suite {suite}.")


@dataclass
class Split:
    """Train and test parts of a table; features typed as a reader gives them, ``y`` encoded."""

    task: str
    n_classes: int
    X_train: pd.DataFrame
    X_test: pd.DataFrame
    y_train: np.ndarray
    y_test: np.ndarray


def split_table(table: ArrayTable, seed: int, test_size: float = 0.25, max_train_rows: int | None = None) -> Split:
    """One seeded split, stratified when every class has two rows or more; only the train part is capped."""
    X = _typed_frame(table)
    stratify = None
    if table.task != "regression" and np.bincount(table.y).min(initial=2) >= 2:
        stratify = table.y
    train, test = train_test_split(np.arange(table.n_rows), test_size=test_size, random_state=seed, stratify=stratify)
    if max_train_rows is not None and len(train) > max_train_rows:
        train = np.random.default_rng(seed).choice(train, max_train_rows, replace=False)
    return Split(table.task, table.n_classes, X.iloc[train].reset_index(drop=True), X.iloc[test].reset_index(drop=True),
                 table.y[train], table.y[test])


def _typed_frame(table: ArrayTable) -> pd.DataFrame:
    """Numbers as float (NaN for missing), strings as pandas categories: what every peer accepts."""
    columns = {}
    for name, values in table.features.items():
        if values.dtype == object:
            levels = sorted({v for v in values if v is not None})
            columns[name] = pd.Categorical(values, categories=levels)
        else:
            columns[name] = values.astype(np.float64)
    return pd.DataFrame(columns)


# --- records -----------------------------------------------------------------------------


@dataclass
class RunRecord:
    """One run; metrics the task does not have stay empty (NaN)."""

    dataset: str
    task: str
    method: str
    budget: float | None
    seed: int
    status: str  # ok | error | timeout
    score: float = math.nan  # roc_auc for classification, r2 for regression
    roc_auc: float = math.nan
    log_loss: float = math.nan
    accuracy: float = math.nan
    r2: float = math.nan
    rmse: float = math.nan
    fit_s: float = math.nan
    predict_s: float = math.nan
    wall_s: float = math.nan  # the whole subprocess, start-up and loading included
    peak_mem_mb: float = math.nan
    trials: float = math.nan
    """Trials a search ran (complete and pruned), for methods that say."""
    n_train: int = 0
    n_test: int = 0
    message: str = ""

    @property
    def key(self) -> tuple[str, str, str, int]:
        return run_key(self.dataset, self.method, self.budget, self.seed)


def run_key(dataset: str, method: str, budget: float | None, seed: int) -> tuple[str, str, str, int]:
    return dataset, method, "" if budget is None else f"{budget:g}", seed


FIELDS = [f.name for f in fields(RunRecord)]


def append_record(path: Path, record: RunRecord) -> None:
    """Append one row as soon as a run ends, so an interrupted benchmark loses at most one run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: "" if v is None else v for k, v in asdict(record).items()})


def read_records(path: Path) -> list[RunRecord]:
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return [RunRecord(**{k: _parse(k, v) for k, v in row.items()}) for row in csv.DictReader(fh)]


def _parse(field: str, text: str) -> object:
    if field in _TEXT_FIELDS:
        return text
    if field in _INT_FIELDS:
        return int(text)
    if field == "budget" and text == "":
        return None
    return float(text) if text else math.nan


_TEXT_FIELDS = {"dataset", "task", "method", "status", "message"}
_INT_FIELDS = {"seed", "n_train", "n_test"}


def write_json(path: Path, payload: object) -> None:
    """JSON with NaN written as null, so any JSON reader takes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_nulls(payload), indent=1) + "\n")


def _nulls(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nulls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nulls(v) for v in value]
    return value


# --- summary -------------------------------------------------------------------------------


def summarise(records: list[RunRecord]) -> list[dict]:
    """One row per method, best mean normalised score first.

    Scores are averaged over seeds per (dataset, method). On each dataset, a method's
    normalised score is (score - min) / (max - min) over the methods that finished there
    (1 when they all tie); a failed run counts as normalised score 0 and shares the
    last rank. Wins count datasets where a method has the best score (ties all win).
    """
    frame = pd.DataFrame([asdict(r) for r in records])
    if frame.empty:
        return []
    frame["ok"] = frame["status"] == "ok"
    per = frame.groupby(["dataset", "method"], sort=False).agg(
        task=("task", "first"), score=("score", "mean"), ok=("ok", "all")).reset_index()
    per.loc[~per["ok"], "score"] = math.nan
    per["norm"] = 0.0
    per["rank"] = math.nan
    per["win"] = False
    for _, idx in per.groupby("dataset").groups.items():
        scores = per.loc[idx, "score"]
        lo, hi = scores.min(), scores.max()
        if not math.isnan(hi):
            per.loc[idx, "norm"] = ((scores - lo) / (hi - lo) if hi > lo else scores * 0 + 1.0).fillna(0.0)
            per.loc[idx, "win"] = scores == hi
        per.loc[idx, "rank"] = scores.rank(ascending=False, method="average", na_option="bottom")
    rows = []
    for method, group in per.groupby("method", sort=False):
        runs = frame[frame["method"] == method]
        cls, reg = group[group["task"] != "regression"], group[group["task"] == "regression"]
        rows.append({
            "method": method,
            "roc_auc": float(cls["score"].mean()) if len(cls) else math.nan,
            "r2": float(reg["score"].mean()) if len(reg) else math.nan,
            "norm_score": float(group["norm"].mean()),
            "avg_rank": float(group["rank"].mean()),
            "wins": int(group["win"].sum()),
            "median_fit_s": float(runs.loc[runs["ok"], "fit_s"].median()),
            "median_trials": float(runs.loc[runs["ok"], "trials"].median()),
            "n_ok": int(runs["ok"].sum()),
            "n_failed": int((~runs["ok"]).sum()),
        })
    return sorted(rows, key=lambda r: -r["norm_score"])


def labelled_records(folders: list[tuple[str | None, Path]]) -> list[RunRecord]:
    """The runs of several ``runs.csv`` folders as one list; a labelled folder's methods become ``label:method``.

    Why: two copies of the code (before and after a change) write the same method names; labels keep them apart
    so that one summary normalises them against each other, as runs of one benchmark.
    """
    records = []
    for label, folder in folders:
        path = folder / "runs.csv"
        if not path.is_file():
            raise DataError(f"{folder} has no runs.csv.", "Give folders that `metagen bench peers --out` wrote.")
        records += [replace(r, method=f"{label}:{r.method}") if label else r for r in read_records(path)]
    return records


def head_to_head(records: list[RunRecord], reference: str, tie: float = 1e-4) -> list[dict]:
    """Per method, the tables where its score (mean over seeds) is above, within ``tie`` of, or below
    ``reference``'s; tables where either did not finish are left out. Why: a mean of normalised scores can hide
    whether one method leads on many tables or on a few by much."""
    frame = pd.DataFrame([asdict(r) for r in records if r.status == "ok"])
    if frame.empty or reference not in set(frame["method"]):
        raise DataError(f"No finished runs of {reference!r} to compare against.",
                        "Name a method of the summary, as it is printed (label:method@budget).")
    scores = frame.pivot_table(index="dataset", columns="method", values="score", aggfunc="mean")
    rows = []
    for method in scores.columns.drop(reference):
        diff = (scores[method] - scores[reference]).dropna()
        rows.append({"method": method, "against": reference, "ahead": int((diff > tie).sum()),
                     "level": int((diff.abs() <= tie).sum()), "behind": int((diff < -tie).sum())})
    return rows


def summary_table(rows: list[dict], title: str):  # noqa: ANN201 - a rich Table
    from rich.table import Table

    table = Table(title=title)
    heads = {"method": "method", "roc_auc": "mean ROC-AUC", "r2": "mean R²", "norm_score": "mean norm. score",
             "avg_rank": "avg rank", "wins": "wins", "median_fit_s": "median fit s", "median_trials": "median trials",
             "n_ok": "ok", "n_failed": "failed"}
    for key, head in heads.items():
        table.add_column(head, justify="left" if key == "method" else "right", no_wrap=key == "method")
    for row in rows:
        table.add_row(*(_cell(row[k]) for k in heads))
    return table


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def anytime_plot(rows: list[dict], path: Path, title: str) -> None:
    """Mean normalised score against median fit time; budgets of one method joined by a line."""
    plt = pyplot()
    import matplotlib

    fig, ax = plt.subplots(figsize=(8, 5))
    families: dict[str, list[dict]] = {}
    for row in rows:
        if not math.isnan(row["median_fit_s"]):
            families.setdefault(row["method"].split("@")[0], []).append(row)
    for family, members in sorted(families.items()):
        members.sort(key=lambda r: r["median_fit_s"])
        ax.plot([r["median_fit_s"] for r in members], [r["norm_score"] for r in members], "o-", label=family)
        for r in members:
            ax.annotate(r["method"], (r["median_fit_s"], r["norm_score"]), fontsize=7,
                        textcoords="offset points", xytext=(4, 3))
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap on short ranges
    ax.set_xlabel("median fit time per table (s, log scale)")
    ax.set_ylabel("mean normalised score (1 = best on each table)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plain_table(rows: list[dict], title: str):  # noqa: ANN201 - a rich Table
    """Any list of records with the same keys, as a rich table (the bench commands' output)."""
    from rich.table import Table

    table = Table(title=title)
    for key in rows[0] if rows else []:
        table.add_column(key, justify="right" if isinstance(rows[0][key], (int, float)) else "left")
    for row in rows:
        table.add_row(*(_cell(v) for v in row.values()))
    return table
