"""Stage 2 of ``fit``: columns become a float matrix, with state that is plain JSON.

Fitted on training rows only. The same code prepares tables for meta-training
(``task_corpus``) so the meta-model sees tables exactly as ``fit`` will.

- numbers: quantile-to-normal (default) or robust scaling with smooth clipping;
- categories: one-hot for up to ``MAX_ONEHOT`` levels, log-frequency beyond;
  unseen levels at predict time map to all-zeros / frequency zero;
- missing values: imputed (to the median, i.e. 0 after scaling) plus an indicator
  column when the training rows had any.

The ``ordinal`` scaling is the trees' view of the same columns: raw numbers with
missing values left as NaN, and each category as its frequency rank (unseen and
missing levels NaN), one output column per input column.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from scipy.special import ndtri

from metagen.table import ColumnInfo

NumericScaling = Literal["quantile", "robust", "ordinal"]
MAX_ONEHOT = 10
N_QUANTILES = 64
_CLIP = 5.0
# A tree sees a category column as categorical up to this many levels (HistGradientBoosting's
# 255 bins, less room for missing values); beyond, as its frequency rank.
MAX_TREE_CATEGORIES = 250
# Infinities in the ordinal view: the largest values float32 holds comfortably.
_HUGE = 1e30


@dataclass
class ColumnState:
    """How one input column becomes one or more output columns."""

    name: str
    kind: str
    indicator: bool = False
    # numeric
    quantiles: list[float] = field(default_factory=list)
    normals: list[float] = field(default_factory=list)
    center: float = 0.0
    scale: float = 1.0
    # categorical / boolean: level strings; frequency encoding stores log frequencies
    levels: list[str] = field(default_factory=list)
    log_freq: list[float] = field(default_factory=list)
    unseen: float = 0.0  # log frequency given to levels never seen in training

    def width(self, scaling: NumericScaling) -> int:
        if scaling == "ordinal":
            return 1
        return (len(self.levels) if self.kind == "onehot" else 1) + int(self.indicator)


@dataclass
class Preprocessor:
    """Fitted preprocessing; ``to_json``/``from_json`` round-trip it exactly."""

    scaling: NumericScaling
    columns: list[ColumnState]

    @property
    def input_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def n_features_out(self) -> int:
        return sum(c.width(self.scaling) for c in self.columns)

    @property
    def categorical(self) -> list[bool]:
        """Per output column of the ordinal view: does it hold category codes a tree may split as sets?"""
        return [c.kind in ("onehot", "frequency") and len(c.levels) <= MAX_TREE_CATEGORIES for c in self.columns]

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        """Rows to a float32 matrix; ``X`` must hold every input column (extra ones are ignored)."""
        out = np.empty((len(X), self.n_features_out), dtype=np.float32)
        j = 0
        for state in self.columns:
            block = _transform_column(state, X[state.name], self.scaling)
            out[:, j : j + block.shape[1]] = block
            j += block.shape[1]
        return out

    def to_json(self) -> dict:
        return {"scaling": self.scaling, "columns": [asdict(c) for c in self.columns]}

    @classmethod
    def from_json(cls, state: dict) -> "Preprocessor":
        return cls(state["scaling"], [ColumnState(**c) for c in state["columns"]])


def fit_preprocessor(X: pd.DataFrame, columns: list[ColumnInfo], scaling: NumericScaling = "quantile") -> Preprocessor:
    states = [_fit_column(X[c.name], c) for c in columns if c.used]
    return Preprocessor(scaling, states)


def _fit_column(col: pd.Series, info: ColumnInfo) -> ColumnState:
    has_missing = bool(col.isna().any())
    if info.kind == "numeric":
        values = _as_float(col)
        values = values[np.isfinite(values)]
        if values.size == 0:  # every training value missing: a constant after imputation
            values = np.zeros(1)
        probs = np.linspace(0.0, 1.0, min(N_QUANTILES, max(2, np.unique(values).size)))
        q = np.quantile(values, probs)
        # Repeated quantiles (discrete columns) map to the mean of their probabilities.
        uq, inverse = np.unique(q, return_inverse=True)
        up = np.bincount(inverse, weights=probs) / np.bincount(inverse)
        eps = 0.5 / (len(values) + 1)
        normals = ndtri(np.clip(up, eps, 1 - eps))
        median = float(np.median(values))
        q25, q75 = np.quantile(values, [0.25, 0.75])
        scale = float(q75 - q25) or float(np.std(values)) or 1.0
        return ColumnState(
            info.name, "numeric", has_missing, uq.tolist(), normals.tolist(), median, scale / 1.349
        )
    levels = pd.Series(_as_text(col.dropna())).value_counts()
    if info.kind == "boolean" or len(levels) <= MAX_ONEHOT:
        # A boolean column whose fitted rows show one of its two levels is one-hot, so the other stays unseen.
        kind = "binary" if info.kind == "boolean" and not has_missing and len(levels) == 2 else "onehot"
        names = sorted(levels.index) if kind == "binary" else list(levels.index)
        return ColumnState(info.name, kind, has_missing, levels=names)
    freq = np.log((levels.to_numpy() + 1.0) / (len(col) + 1.0))
    center, scale = float(freq.mean()), float(freq.std()) or 1.0
    return ColumnState(
        info.name, "frequency", has_missing, levels=list(levels.index), log_freq=freq.tolist(),
        unseen=float(np.log(1.0 / (len(col) + 1.0))), center=center, scale=scale,
    )


def _as_float(col: pd.Series) -> np.ndarray:
    return pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _as_text(col: pd.Series) -> np.ndarray:
    """Levels as strings; a whole float prints as an integer, so 1.0 from a column with gaps is level "1"."""
    text = col.astype(str).to_numpy(dtype=object)
    if pd.api.types.is_float_dtype(col):
        x = col.to_numpy(dtype=np.float64, na_value=np.nan)
        whole = np.isfinite(x) & (np.abs(x) < 2**53) & (x == np.round(x))
        text[whole] = x[whole].astype(np.int64).astype(str)
    return text


def _ordinal_column(state: ColumnState, col: pd.Series) -> np.ndarray:
    if state.kind == "numeric":
        return np.clip(_as_float(col), -_HUGE, _HUGE)[:, None]
    codes = {level: float(i) for i, level in enumerate(state.levels)}
    text = _as_text(col)
    out = np.fromiter((codes.get(t, np.nan) for t in text), dtype=np.float64, count=len(col))
    out[col.isna().to_numpy()] = np.nan
    return out[:, None]


def _transform_column(state: ColumnState, col: pd.Series, scaling: NumericScaling) -> np.ndarray:
    if scaling == "ordinal":
        return _ordinal_column(state, col)
    n = len(col)
    missing = col.isna().to_numpy()
    if state.kind == "numeric":
        x = _as_float(col)
        missing = np.isnan(x)
        # Missing values take the median; infinities the extremes. Both end up clipped.
        x = np.nan_to_num(x, nan=state.center, posinf=1e300, neginf=-1e300)
        if scaling == "quantile":
            z = np.interp(x, state.quantiles, state.normals)
        else:
            with np.errstate(over="ignore"):  # huge values become +-inf here, then +-1e6
                r = np.clip((x - state.center) / state.scale, -1e6, 1e6)
            z = r / np.sqrt(1.0 + (r / 3.0) ** 2)
        z = np.clip(z, -_CLIP, _CLIP)
        block = z[:, None]
    else:
        text = _as_text(col)
        if state.kind == "binary":
            block = np.where(text == state.levels[1], 1.0, -1.0)[:, None]
        elif state.kind == "onehot":
            block = (text[:, None] == np.asarray(state.levels, dtype=object)[None, :]).astype(np.float64)
        else:
            lookup = dict(zip(state.levels, state.log_freq))
            f = np.fromiter((lookup.get(t, state.unseen) for t in text), dtype=np.float64, count=n)
            block = ((f - state.center) / state.scale)[:, None]
        block[missing] = 0.0
    if state.indicator:
        block = np.concatenate([block, missing[:, None].astype(np.float64)], axis=1)
    return block
