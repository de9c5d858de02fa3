"""Predict throughput: scikit-learn's own trees against their exported node arrays, and whole ensembles.

On one seeded synthetic table (numeric columns with missing values, one categorical
column, a binary target) every row is predicted as one batch; each path is run once
untimed (its predictions are checked), then ``repeats`` times timed, and the median
gives rows per second.

- ``scikit-learn``: the fitted estimator's ``predict_proba`` on the ordinal matrix;
- ``metagen arrays``: the same model exported as a :class:`~metagen.serving.trees.TreePart`
  (``part.predict``), with its largest absolute difference from scikit-learn's probabilities;
- ``metagen predictor``: a whole fitted model through ``Predictor.predict_proba`` on a
  DataFrame (preprocessing included);
- ``metagen arrays`` of a whole model: ``FittedModel.predict_views`` on views computed beforehand
  (its members' parts, no preprocessing).

The max abs difference is against scikit-learn, so it is empty (NaN) for whole models.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd

N_FOREST_TREES = 100
CATEGORIES = 12


def synthetic_frame(rows: int, columns: int, seed: int) -> pd.DataFrame:
    """``columns - 1`` numeric columns (about 10 % missing) and one categorical column; a binary target ``y``."""
    if columns < 2:
        raise ValueError("columns must be at least 2 (one numeric, one categorical)")
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, columns - 1))
    colour = rng.integers(0, CATEGORIES, size=rows)
    effect = rng.normal(size=CATEGORIES)[colour]
    w = rng.normal(size=columns - 1) / math.sqrt(columns - 1)
    logit = X @ w + 0.8 * np.sin(2 * X[:, 0]) + X[:, -1] * (X[:, 0] > 0) + effect
    y = (rng.random(rows) < 1 / (1 + np.exp(-2 * logit))).astype(int)
    X[rng.random(X.shape) < 0.1] = np.nan
    frame = pd.DataFrame(X, columns=[f"x{j}" for j in range(columns - 1)])
    cat = pd.Series([f"c{c}" for c in colour], dtype=object)
    cat[rng.random(rows) < 0.05] = None
    frame["colour"] = cat
    frame["y"] = y
    return frame


@contextlib.contextmanager
def _threads(threads: int) -> Iterator[None]:
    """OpenMP/BLAS pools and torch limited to ``threads`` for the block (restored after it)."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(before)


def _timed(run: Callable[[], np.ndarray], repeats: int) -> tuple[np.ndarray, float]:
    """The predictions of one untimed run and the median seconds of ``repeats`` timed runs."""
    out = run()
    seconds = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return out, statistics.median(seconds)


def _row(model: str, path: str, rows: int, seconds: float, reference_s: float | None, diff: float,
         detail: str) -> dict:
    return {
        "model": model, "path": path, "rows_per_s": rows / seconds, "seconds": seconds,
        "ratio": math.nan if reference_s is None else reference_s / seconds, "max_abs_diff": diff, "detail": detail,
    }


def _tree_detail(part) -> str:  # noqa: ANN001 - a TreePart
    return f"{len(part.roots)} trees, {len(part.feature)} nodes, depth {part.depth}"


def _families(fitted) -> str:  # noqa: ANN001 - a FittedModel
    """Each member's family, weight and number of parts (fold models), e.g. ``gbdt 0.35 x5``."""
    return ", ".join(f"{m.family} {m.weight:.2f} x{len(m.parts)}" for m in fitted.members)


def _two_networks(table, seed: int):  # noqa: ANN001, ANN201 - a Table -> a FittedModel
    """A network-only ensemble of exactly two members (a second fit adds one when the selection keeps one)."""
    from metagen import FitOptions, fit_table

    fitted = fit_table(table, FitOptions(n_trials=2, seed=seed, use_meta=False, max_steps=50, families=("mlp",)))
    fitted.members = fitted.members[:2]
    extra = 1
    while len(fitted.members) < 2:
        more = fit_table(table, FitOptions(n_trials=1, seed=seed + extra, use_meta=False, max_steps=50,
                                           families=("mlp",)))
        fitted.members.append(more.members[0])
        fitted.views.update(more.views)
        extra += 1
    for m in fitted.members:
        m.weight = 1.0 / len(fitted.members)
    return fitted


def predict_throughput(rows: int = 100_000, columns: int = 10, seed: int = 0, repeats: int = 5,
                       threads: int = 1) -> list[dict]:
    """One record per (model, path): rows/s (median of ``repeats``, batch = all rows), the ratio to
    scikit-learn's own predict of the same model, and the exported arrays' max abs difference from it."""
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    from metagen import FitOptions, fit_table, make_table
    from metagen.families._trees import from_boosting, from_forest
    from metagen.predictor import Predictor
    from metagen.preprocess import fit_preprocessor

    frame = synthetic_frame(rows, columns, seed)
    table = make_table(frame, target="y")
    X_frame = frame.drop(columns="y")
    view = fit_preprocessor(table.X, table.columns, "ordinal")
    X = view.transform(table.X)
    y = table.y
    n_out = len(table.classes)
    categorical = np.asarray(view.categorical, dtype=bool)
    out: list[dict] = []

    with _threads(threads):
        hgb = HistGradientBoostingClassifier(categorical_features=categorical if categorical.any() else None,
                                             random_state=seed).fit(X, y)
        forest = RandomForestClassifier(n_estimators=N_FOREST_TREES, random_state=seed, n_jobs=threads).fit(X, y)
        for name, model, export in (("HistGradientBoosting", hgb, from_boosting),
                                    (f"RandomForest ({N_FOREST_TREES} trees)", forest, from_forest)):
            part = export(model, n_out, X.shape[1], False)
            expected, ref_s = _timed(lambda m=model: m.predict_proba(X), repeats)
            got, part_s = _timed(lambda p=part: p.predict(X), repeats)
            diff = float(np.abs(got - expected).max())
            out.append(_row(name, "scikit-learn", rows, ref_s, ref_s, 0.0, _tree_detail(part)))
            out.append(_row(name, "metagen arrays", rows, part_s, ref_s, diff, _tree_detail(part)))

        ensembles = (
            ("metagen ensemble (8 trials)",
             lambda: fit_table(table, FitOptions(n_trials=8, seed=seed, use_meta=False, max_steps=50))),
            ("two-network ensemble (mlp)", lambda: _two_networks(table, seed)),
        )
        for name, fit in ensembles:
            fitted = fit()
            predictor = Predictor(fitted)
            views = fitted.transform(X_frame)
            via_predictor, pred_s = _timed(lambda: predictor.predict_proba(X_frame), repeats)
            via_views, views_s = _timed(lambda: fitted.predict_views(views), repeats)
            if not np.allclose(via_predictor, via_views, rtol=0, atol=1e-9):
                raise AssertionError(f"{name}: predictor and views disagree")
            out.append(_row(name, "metagen predictor", rows, pred_s, None, math.nan, _families(fitted)))
            out.append(_row(name, "metagen arrays", rows, views_s, None, math.nan, _families(fitted)))
    return out
