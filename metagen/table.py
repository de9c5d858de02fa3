"""Stage 1 of ``fit``: a CSV file or DataFrame becomes a :class:`Table`.

A table knows its columns and their kinds, its target and the task kind. Everything
later (preprocessing, search, the model file) reads this schema instead of guessing
again, so one decision about a column is made in exactly one place.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import io
import logging
import re
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from metagen.errors import DataError, TargetError
from metagen.extras import require
from metagen.metrics import metric_name

log = logging.getLogger(__name__)

TaskKind = Literal["binary", "multiclass", "regression"]
ColumnKind = Literal["numeric", "categorical", "boolean", "constant", "id"]

TARGET_NAMES = ("target", "class", "label", "y")
MAX_CLASSES = 200
MIN_ROWS = 5
# An integer target with at most this many distinct values is read as classes.
MAX_INTEGER_CLASSES = 30
_SNIFF_BYTES = 64 * 1024
PARQUET_SUFFIXES = (".parquet", ".pq")
EXCEL_SUFFIXES = (".xlsx", ".xlsm")
# Numbers written for people: "1,234.5" (thousands commas) or "1.234,5" / "0,5" (decimal commas).
_THOUSANDS = re.compile(r"[-+]?[1-9]\d{0,2}(,\d{3})+(\.\d+)?|[-+]?\d+(\.\d+)?")
_DECIMAL_COMMA = re.compile(r"[-+]?\d{1,3}(\.\d{3})*(,\d+)?|[-+]?\d+(,\d+)?")


@dataclass(frozen=True)
class ColumnInfo:
    """One feature column as metagen sees it."""

    name: str
    kind: ColumnKind
    n_unique: int
    n_missing: int

    @property
    def used(self) -> bool:
        """Constant and id-like columns carry no signal a model could generalise from."""
        return self.kind not in ("constant", "id")


@dataclass
class Table:
    """Features, target and the decisions made about them."""

    X: pd.DataFrame
    y: np.ndarray
    target: str
    task: TaskKind
    columns: list[ColumnInfo]
    classes: list | None = None
    target_guessed: bool = False
    n_dropped_rows: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def n_rows(self) -> int:
        return len(self.X)

    @property
    def metric(self) -> str:
        return metric_name(self.task)

    def schema(self) -> list[dict]:
        return [asdict(c) for c in self.columns]


def read_frame(path: str | Path) -> pd.DataFrame:
    """Read a table as people have it, by extension: CSV/TSV (also gzipped), Parquet, Excel; ``-``: CSV on stdin."""
    name = str(path)
    suffix = Path(name).suffix.lower()
    if name != "-" and suffix in PARQUET_SUFFIXES + EXCEL_SUFFIXES:
        path = _existing_file(Path(name))
        parquet = suffix in PARQUET_SUFFIXES
        if parquet:
            require("pyarrow", "parquet", "Reading Parquet files")
        else:
            require("openpyxl", "excel", "Reading Excel files")
        try:
            df = pd.read_parquet(path) if parquet else pd.read_excel(path, sheet_name=0)
        except Exception as exc:  # each reader has its own errors for a malformed file
            raise DataError(f"Cannot read {path}: {exc}.", f"Is it a valid {suffix} file?") from exc
        _check_unique_names(df)
        df.columns = [str(c).strip() for c in df.columns]
        return df
    if suffix == ".xls":
        raise DataError(f"{path} is an old-style Excel file (.xls).", "Save it as .xlsx or CSV.")
    return read_csv(path)


def write_frame(frame: pd.DataFrame, path: str | Path) -> None:
    """Write predictions by the output's extension: Parquet for .parquet/.pq, tab-separated for .tsv, else CSV."""
    suffix = Path(path).suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        require("pyarrow", "parquet", "Writing Parquet files")
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False, sep="\t" if suffix == ".tsv" else ",")


def _existing_file(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"File not found: {path}.", "Check the path and try again.")
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a table.", "Pass the path of a CSV, Parquet or Excel file.")
    return path


def read_csv(path: str | Path) -> pd.DataFrame:
    """Read a delimited text file (``-``: standard input), sniffing the delimiter and falling back on encodings."""
    if str(path) == "-":
        raw = sys.stdin.buffer.read()
        return _parse_delimited("standard input", raw[:_SNIFF_BYTES], io.BytesIO(raw), tab_default=False)
    path = _existing_file(Path(path))
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError as exc:
        raise DataError(f"Cannot read {path}: {exc}.", "Is it a readable CSV file?") from exc
    return _parse_delimited(str(path), head, path, tab_default=path.suffix in (".tsv", ".gz"))


def _parse_delimited(path: str, head: bytes, source: Path | io.BytesIO, tab_default: bool) -> pd.DataFrame:
    """``head`` is the start of ``source``; a delimiter it does not show is a tab when ``tab_default``."""
    if not head.strip():
        raise DataError(f"{path} is empty.", "Pass a CSV file with a header row and data rows.")
    if b"\x00" in head:
        raise DataError(f"{path} is a binary file, not a text table.", "Export the data as CSV first.")
    encoding = _detect_encoding(head)
    text = head.decode(encoding, errors="replace")
    sep = _sniff_delimiter(text, tab_default)
    header = [name.strip() for name in next(csv.reader(io.StringIO(text), delimiter=sep), [])]
    _check_unique_names(pd.DataFrame(columns=header))  # pandas would rename duplicates to "a.1"
    try:
        df = pd.read_csv(source, sep=sep, encoding=encoding, low_memory=False, skipinitialspace=True,
                         na_values=["?"])
    except pd.errors.ParserError as exc:
        raise DataError(
            f"{path} is not a regular table: {str(exc).strip()}.",
            "Every row needs the same number of fields as the header; check for stray delimiters.",
        ) from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path} has no columns.", "Pass a CSV file with a header row.") from exc
    if encoding == "latin-1":
        log.warning("%s is not valid UTF-8; read it as Latin-1.", path)
    df.columns = [str(c).strip() for c in df.columns]
    for name in df.select_dtypes(include=["object", "string"]).columns:
        df[name] = _parse_written_numbers(df[name], decimal_comma_first=sep == ";")
    return df


def _parse_written_numbers(col: pd.Series, decimal_comma_first: bool) -> pd.Series:
    """A text column of numbers with thousands separators or decimal commas becomes numbers.

    "1,250" is ambiguous; files separated by ';' usually write decimal commas, others thousands.
    """
    levels = pd.Series(col.dropna().unique()).astype(str).str.strip()
    if levels.empty or not levels.str.contains(",", regex=False).any():
        return col
    thousands = (_THOUSANDS, {",": ""})
    decimal = (_DECIMAL_COMMA, {".": "", ",": "."})
    for pattern, replace in (decimal, thousands) if decimal_comma_first else (thousands, decimal):
        if levels.str.fullmatch(pattern).all():
            text = col.astype("string").str.strip()
            for old, new in replace.items():
                text = text.str.replace(old, new, regex=False)
            return pd.to_numeric(text).astype(np.float64)
    return col


def _detect_encoding(head: bytes) -> str:
    for encoding in ("utf-8-sig", "utf-8"):
        try:
            head.decode(encoding)
            return encoding
        except UnicodeDecodeError as exc:
            # A multi-byte character cut at the end of the sniffed block is still UTF-8.
            if exc.start >= len(head) - 3:
                return encoding
    return "latin-1"


def _sniff_delimiter(text: str, tab_default: bool) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()][:50]
    if len(lines) > 1 and not text.endswith("\n"):
        lines = lines[:-1]  # the sniffed block may end mid-row
    sample = "\n".join(lines)
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        if tab_default or "\t" in lines[0]:
            return "\t"
        return ","


def make_table(
    data: pd.DataFrame,
    target: str | None = None,
    task: TaskKind | None = None,
) -> Table:
    """Pick the target, infer the task and the column kinds, and drop unlabelled rows."""
    if data.shape[1] == 0:
        raise DataError("The table has no columns.", "Pass a table with a header row.")
    if data.shape[1] == 1:
        raise DataError(
            f"The table has one column only ({str(data.columns[0])[:60]!r}); metagen needs a target and features.",
            "If the file uses another delimiter, separate its fields with , ; tab or |.",
        )
    _check_unique_names(data)
    target, guessed = _resolve_target(data, target)
    if len(data) == 0:
        raise DataError("The table has a header but no data rows.", "Add rows to the file.")
    if len(data) < MIN_ROWS:
        raise DataError(
            f"The table has {len(data)} sample(s); metagen needs at least {MIN_ROWS} rows.", "Add rows to the file."
        )
    y_raw = data[target]
    keep = y_raw.notna().to_numpy()
    notes: list[str] = []
    n_dropped = int((~keep).sum())
    if n_dropped == len(data):
        raise TargetError(f"The target column '{target}' is empty in every row.", "Pick another target column.")
    if n_dropped:
        msg = f"Dropped {n_dropped} row(s) whose target '{target}' is missing."
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)
    X = data.drop(columns=[target]).loc[keep].reset_index(drop=True)
    y_raw = y_raw.loc[keep].reset_index(drop=True)
    if X.shape[1] == 0:
        raise DataError("The table has a target but no feature columns.", "Add at least one feature column.")
    task = task or infer_task(y_raw)
    y, classes = _encode_target(y_raw, task, target)
    columns = [describe_column(X[c]) for c in X.columns]
    if not any(c.used for c in columns):
        reasons = "; ".join(f"'{c.name}' {_refusal(X[c.name], c)}" for c in columns[:20])
        more = f"; and {len(columns) - 20} more" if len(columns) > 20 else ""
        raise DataError(
            f"Every feature column is refused, so there is nothing to learn from: {reasons}{more}.",
            "Add a column that varies between rows. An integer column named id, *_id, index, row or rowid is kept "
            "once renamed, unless its values run consecutively; a constant, empty or unique-text column carries "
            "nothing a model could learn.",
        )
    return Table(X, y, target, task, columns, classes, guessed, n_dropped, notes)


def _check_unique_names(data: pd.DataFrame) -> None:
    names = [str(c) for c in data.columns]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(
            f"Duplicate column names: {', '.join(dupes)}.",
            "Rename the columns so that each name is used once.",
        )


def _resolve_target(data: pd.DataFrame, target: str | None) -> tuple[str, bool]:
    names = [str(c) for c in data.columns]
    if target is not None:
        if target in names:
            return target, False
        lower = {n.lower(): n for n in names}
        close = difflib.get_close_matches(target.lower(), list(lower), n=1, cutoff=0.5)
        hint = f"Did you mean '{lower[close[0]]}'?" if close else f"Columns are: {_short_list(names)}."
        raise TargetError(f"Target column '{target}' is not in the table.", hint)
    last = names[-1]
    if last.lower() in TARGET_NAMES:
        return last, True
    raise TargetError(
        f"No target given, and the last column '{last}' is not named {', '.join(TARGET_NAMES)}.",
        f"Pass --target COLUMN (columns: {_short_list(names)}).",
    )


def _short_list(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def infer_task(y: pd.Series) -> TaskKind:
    """Strings, booleans and integers with few values are classes; other numbers are regression."""
    values = y.dropna()
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.isna().any() or values.dtype == bool:
        return "binary" if values.nunique() == 2 else "multiclass"
    n_unique = numeric.nunique()
    integer_valued = bool(np.all(np.mod(numeric.to_numpy(dtype=float), 1) == 0))
    if n_unique == 2:
        return "binary"
    if integer_valued and n_unique <= MAX_INTEGER_CLASSES:
        return "multiclass"
    return "regression"


def _encode_target(y: pd.Series, task: TaskKind, name: str) -> tuple[np.ndarray, list | None]:
    if task == "regression":
        values = pd.to_numeric(y, errors="coerce")
        if values.isna().any():
            bad = y[values.isna()].iloc[0]
            raise TargetError(
                f"Target '{name}' has non-numeric value {bad!r} but the task is regression.",
                "Clean the target column, or use --task multiclass.",
            )
        arr = values.to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise TargetError(f"Target '{name}' has infinite values.", "Remove or fix those rows.")
        if np.ptp(arr) == 0:
            raise TargetError(f"Target '{name}' is constant ({arr[0]:g}).", "A model cannot learn a constant.")
        return arr, None
    classes = sorted(pd.unique(y), key=_sort_key)
    if len(classes) < 2:
        raise TargetError(
            f"Target '{name}' has one class only ({classes[0]!r}).",
            "Classification needs at least two classes in the training rows.",
        )
    if len(classes) > MAX_CLASSES:
        raise TargetError(
            f"Target '{name}' has {len(classes)} classes (more than {MAX_CLASSES}).",
            "If it is a number to predict, pass --task regression.",
        )
    index = {c: i for i, c in enumerate(classes)}
    codes = np.fromiter((index[v] for v in y), dtype=np.int64, count=len(y))
    return codes, [_plain(c) for c in classes]


def _sort_key(v: object) -> tuple:
    return (0, float(v), "") if isinstance(v, (int, float, np.number)) else (1, 0.0, str(v))


def _plain(v: object) -> object:
    """Class labels go to JSON; numpy scalars become Python ones."""
    return v.item() if isinstance(v, np.generic) else v


def describe_column(col: pd.Series) -> ColumnInfo:
    """Decide a column's kind from its values alone."""
    name = str(col.name)
    n_missing = int(col.isna().sum())
    values = col.dropna()
    n_unique = int(values.nunique())
    if n_unique <= 1:
        kind: ColumnKind = "constant"
    elif n_unique == 2:
        kind = "boolean"
    elif is_numeric_column(col):
        kind = "id" if _looks_like_integer_id(name, values) else "numeric"
    else:
        kind = "id" if n_unique == len(values) and len(values) >= 20 else "categorical"
    return ColumnInfo(name, kind, n_unique, n_missing)


def _refusal(col: pd.Series, info: ColumnInfo) -> str:
    """Why a column is not used, in words a person can act on."""
    if info.n_missing == len(col):
        return "is empty in every row"
    if info.kind == "constant":
        return f"is constant ({_plain(col.dropna().iloc[0])!r} in every row with a value)"
    if not is_numeric_column(col):
        return "has a different text in every row (an identifier)"
    numeric = pd.to_numeric(col.dropna(), errors="coerce").to_numpy(dtype=float)
    if np.ptp(numeric) == len(numeric) - 1:
        return "is a running number (consecutive integers, each once)"
    return "holds unique integers and is named like an identifier"


def is_numeric_column(col: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(col):
        return False
    if pd.api.types.is_numeric_dtype(col):
        return True
    values = col.dropna()
    if len(values) == 0:
        return False
    parsed = pd.to_numeric(values, errors="coerce")
    return bool(parsed.notna().mean() >= 0.99)


def _looks_like_integer_id(name: str, values: pd.Series) -> bool:
    """A running number (1, 2, 3, ...) or a unique integer column called ``id``."""
    if len(values) < 20 or values.nunique() != len(values):
        return False
    numeric = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    if not np.all(np.mod(numeric, 1) == 0):
        return False
    lname = name.lower()
    named_id = lname == "id" or lname.endswith("_id") or lname.endswith(" id") or lname in ("index", "row", "rowid")
    ordered = np.ptp(numeric) == len(numeric) - 1
    return named_id or ordered


def read_table(path: str | Path, target: str | None = None, task: TaskKind | None = None) -> Table:
    return make_table(read_frame(path), target=target, task=task)

