"""The report of a fit: one self-contained HTML file, plots inline as SVG, written from a model file and its study.

It is made from what a person keeps: the model file (schema, leaderboard, metrics, and the predictions of the rows
the score was measured on), the Optuna study beside it, and, when given, the table. Each section says what it was
drawn from, and a section whose source is not at hand says what it needs, so a report can be made later from
the model file alone. Serving code never imports this module.
"""

from __future__ import annotations

import html
import io
import json
import math
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metagen.errors import DataError
from metagen.extras import pyplot
from metagen.families import ALL
from metagen.metrics import selection_score
from metagen.model_file import read_spec
from metagen.predictor import Predictor, load
from metagen.table import Table

# Rows the permutation importance shuffles (a seeded sample), and shuffles per column.
IMPORTANCE_ROWS = 1000
IMPORTANCE_REPEATS = 3
# Columns shown in the importance plot, classes given their own ROC curve.
TOP_COLUMNS = 20
MAX_ROC_CLASSES = 10
# A longer list of columns is folded (one click opens it).
FOLDED_COLUMNS = 12
# A family's parameters get importances from this many complete trials of it.
MIN_IMPORTANCE_TRIALS = 3

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .9em; }
td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
td.text, th.text { text-align: left; } th { background: #f4f4f4; }
.note { color: #8a5300; background: #fff7e6; padding: .4em .8em; border-left: 3px solid #e0a030; }
.source { color: #555; font-size: .9em; }
figure.plot { display: inline-block; margin: .4em 1em .4em 0; vertical-align: top; }
figure.plot svg { max-width: 100%; height: auto; }
"""


def write_report(model_path: str | Path, output: str | Path, *, table: Table | None = None, data_name: str = "",
                 storage: str | None = None) -> Path:
    """Write the report of ``model_path`` to ``output``; ``table`` (read from ``data_name``) adds what needs rows."""
    page = build_report(model_path, table=table, data_name=data_name, storage=storage)
    output = Path(output)
    output.write_text(page, encoding="utf-8")
    return output


def build_report(model_path: str | Path, *, table: Table | None = None, data_name: str = "",
                 storage: str | None = None) -> str:
    model_path = Path(model_path)
    pyplot()  # a missing matplotlib is said before any work
    spec, _ = read_spec(model_path)
    predictor = load(model_path)
    study, study_note = _open_study(spec, model_path, storage)
    with _plot_style():
        sections = [
            _data_summary(spec, table, data_name),
            _leaderboard(spec),
            _search(study, study_note),
            _proposer(spec, study),
            _scored(spec, predictor, table, data_name),
            _importance(spec, predictor, table, data_name),
        ]
    title = f"metagen report: {model_path.name}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n<h1>{_e(title)}</h1>\n"
            f"{_header(spec)}\n" + "\n".join(sections) + "\n</body></html>\n")


# --- the sources ----------------------------------------------------------------------------


def _open_study(spec: dict, model_path: Path, storage: str | None) -> tuple[Any, str]:
    """The fit's study, or None and why not: by default the SQLite file ``fit`` writes beside the model."""
    import optuna

    from metagen.storage import journal_path, make_storage

    name = spec["provenance"].get("study_name")
    if storage is None:
        db = model_path.with_suffix(".optuna.db")
        if not db.is_file():
            return None, (f"This section needs the fit's Optuna study, and {db} is not there; "
                          "pass --storage URL if the fit wrote it elsewhere.")
        storage = f"sqlite:///{db}"
    journal = journal_path(storage)
    if journal is not None and not journal.is_file():  # opening it would write an empty journal there
        return None, f"This section needs the fit's Optuna study, and the journal {journal} is not there."
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=name, storage=make_storage(storage)), ""
    except Exception as exc:  # noqa: BLE001 - a missing study, an unreadable file or a bad URL all mean "not at hand"
        return None, f"This section needs the fit's Optuna study '{name}', which {storage} does not give ({exc})."
    finally:
        optuna.logging.set_verbosity(previous)


def _labelled(spec: dict, table: Table) -> np.ndarray:
    """The table's target in the model's terms: class codes of the model's classes, or values."""
    if spec["classes"] is None:
        return np.asarray(table.y, dtype=float)
    index = {str(c): i for i, c in enumerate(spec["classes"])}
    labels = [str(table.classes[k]) for k in table.y]
    unknown = sorted({c for c in labels if c not in index})
    if unknown:
        raise DataError(f"The table's target has classes the model never saw: {', '.join(unknown[:5])}.",
                        "Pass the table the model was fitted on, or one with its classes.")
    return np.asarray([index[c] for c in labels])


def _rows_for_importance(spec: dict, table: Table, data_name: str) -> tuple[np.ndarray, str]:
    """The rows the score was measured on when ``table`` is the training table (same rows), else all rows."""
    prov = spec["provenance"]
    scored = prov.get("scored")
    if scored and table.n_rows == prov.get("n_rows"):
        rows = np.asarray(scored["rows"], dtype=int)
        where = (f"the held-back rows of {data_name}" if prov.get("n_test_rows")
                 else f"the rows of {data_name} the score was measured on (the final model was fitted on them too)")
    else:
        rows = np.arange(table.n_rows)
        where = f"the rows of {data_name} (not the training table's row count: the model may have seen these rows)"
    if len(rows) > IMPORTANCE_ROWS:
        rows = np.sort(np.random.default_rng(0).choice(rows, IMPORTANCE_ROWS, replace=False))
        where += f", a sample of {IMPORTANCE_ROWS}"
    return rows, where


# --- sections -------------------------------------------------------------------------------


def _header(spec: dict) -> str:
    prov = spec["provenance"]
    classes = f", {len(spec['classes'])} classes" if spec["classes"] else ""
    facts = {
        "task": f"{spec['task']} of target '{spec['target']}'{classes}",
        "fitted": f"{prov.get('created', '?')} in {prov.get('fit_seconds', '?')} s "
                  f"(budget {_num(prov.get('time_budget', math.nan), 1)} s, seed {prov.get('seed', '?')})",
        "trials": f"{prov.get('n_trials_complete', '?')} complete, {prov.get('n_trials_pruned', '?')} pruned; "
                  f"study '{prov.get('study_name', '?')}'",
        "validation": f"{prov.get('validation', '?')}; score on {prov.get('score_source', '?')}",
        "ensemble": f"{len(spec['members'])} member(s): " + ", ".join(
            f"{m['family']} ({m['weight']:.2f})" for m in spec["members"]),
        "metagen": spec.get("versions", {}).get("metagen", "?"),
    }
    return _table(["", ""], [[k, v] for k, v in facts.items()], text_columns=(0, 1), show_header=False)


def _data_summary(spec: dict, table: Table | None, data_name: str) -> str:
    prov = spec["provenance"]
    kinds: dict[str, int] = {}
    for c in spec["columns"]:
        kinds[c["kind"]] = kinds.get(c["kind"], 0) + 1
    lines = [f"<p>{prov.get('n_rows', '?')} rows ({prov.get('n_train_rows', '?')} for training, "
             f"{prov.get('n_test_rows', 0)} held back), {len(spec['columns'])} feature columns: "
             + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
             + ". Constant and id-like columns are not used.</p>"]
    rows = [[c["name"], c["kind"], c["n_unique"], c["n_missing"],
             "no" if c["kind"] in ("constant", "id") else "yes"] for c in spec["columns"]]
    columns = _table(["column", "kind", "distinct", "missing", "used"], rows, text_columns=(0, 1, 4))
    if len(rows) > FOLDED_COLUMNS:
        columns = f"<details><summary>the {len(rows)} columns</summary>{columns}</details>"
    lines.append(columns)
    scored = prov.get("scored")
    if table is not None:
        y, where = _labelled(spec, table), f"every row of {data_name}"
    elif scored:
        y, where = np.asarray(scored["y"]), f"the {len(scored['y'])} rows the score was measured on (model file)"
    else:
        return _section("Data", lines + [_note("The target's distribution needs the table (--data FILE) or a model "
                                               "file that keeps its scored rows (one written by a newer metagen).")])
    lines.append(f"<p class='source'>Target '{_e(spec['target'])}' over {_e(where)}.</p>")
    lines.append(_plot(_target_figure, spec, y))
    return _section("Data", lines)


def _target_figure(plt: Any, spec: dict, y: np.ndarray) -> Any:
    fig, ax = plt.subplots(figsize=(6, 3))
    if spec["classes"] is None:
        ax.hist(y, bins=30, color="C0")
        ax.set_xlabel(spec["target"])
        ax.set_ylabel("rows")
    else:
        counts = np.bincount(y.astype(int), minlength=len(spec["classes"]))
        ax.bar([str(c) for c in spec["classes"]], counts, color="C0")
        ax.set_ylabel("rows")
        ax.tick_params(axis="x", labelrotation=45 if len(counts) > 6 else 0)
    ax.set_title(f"target: {spec['target']}")
    return fig


def _leaderboard(spec: dict) -> str:
    board = spec.get("leaderboard", [])
    if not board:
        return _section("Leaderboard", [_note("The model file holds no leaderboard.")])
    metric = spec["provenance"].get("metric", "score")
    families = sorted({r["family"] for r in board}, key=lambda f: max(-r["score"] for r in board if r["family"] == f))
    summary = []
    for family in families:
        mine = [r for r in board if r["family"] == family]
        seconds = [r["seconds"] for r in mine if r.get("seconds") is not None]
        summary.append([family, len(mine), _num(max(r["score"] for r in mine)),
                        _num(float(np.median(seconds)) if seconds else float("nan")),
                        _num(sum(r.get("weight", 0.0) for r in mine))])
    rows = [[r["family"], r["trial"], _num(r["score"]), _num(r["seconds"] if r.get("seconds") is not None else math.nan),
             _num(r.get("weight", 0.0)), r.get("params", "")]
            for family in families for r in board if r["family"] == family]
    return _section("Leaderboard by family", [
        (f"<p class='source'>The best {len(board)} complete trials (model file); {metric} on "
         f"{_e(spec['provenance'].get('validation', ''))} validation; weight is the share of the final ensemble.</p>"),
        _table(["family", "trials", f"best {metric}", "median seconds", "ensemble weight"], summary, text_columns=(0,)),
        _table(["family", "trial", metric, "seconds", "weight", "parameters"], rows, text_columns=(0, 5)),
    ])


def _search(study: Any, note: str) -> str:
    if study is None:
        return _section("Search over time", [_note(note)])
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED") and t.datetime_complete]
    if not finished:
        return _section("Search over time", [_note("The study has no finished trials.")])
    parts = [(f"<p class='source'>Study '{_e(study.study_name)}': {len(finished)} finished trials; pruned trials "
              "(x) at the last fold score they reported.</p>"), _plot(_history_figure, finished)]
    importances, skipped = _param_importances(study)
    if importances:
        parts.append("<p class='source'>Optuna's parameter importances (get_param_importances), per family, over "
                     "its complete trials.</p>")
        parts.append(_plot(_importances_figure, importances))
    if skipped:
        parts.append(_note("No parameter importances for " + "; ".join(skipped) + "."))
    return _section("Search over time", parts)


def _history_figure(plt: Any, trials: list) -> Any:
    start = min(t.datetime_start for t in trials)
    fig, ax = plt.subplots(figsize=(8, 4))
    best, best_x, best_y = -math.inf, [], []
    for t in sorted(trials, key=lambda t: t.datetime_complete):
        x = (t.datetime_complete - start).total_seconds()
        family = t.user_attrs.get("family", t.params.get("family", "?"))
        if t.state.name == "COMPLETE" and t.value is not None and math.isfinite(t.value):
            ax.scatter(x, t.value, color=_colour(family), s=28, zorder=3)
            best = max(best, t.value)
            best_x.append(x)
            best_y.append(best)
        elif t.intermediate_values:
            ax.scatter(x, t.intermediate_values[max(t.intermediate_values)], color=_colour(family), marker="x",
                       s=28, zorder=3)
    if best_x:
        ax.step(best_x, best_y, where="post", color="#444", linewidth=1, label="best so far")
    for family in sorted({t.user_attrs.get("family", t.params.get("family", "?")) for t in trials}):
        ax.scatter([], [], color=_colour(family), label=family)
    ax.set_xlabel("seconds since the search started")
    ax.set_ylabel("score")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("search over time")
    return fig


def _param_importances(study: Any) -> tuple[dict[str, tuple[int, dict[str, float]]], list[str]]:
    """Each family's parameter importances over its own complete trials (the space is conditional on family)."""
    import optuna

    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    importances, skipped = {}, []
    for family in sorted({t.params.get("family") for t in complete if "family" in t.params}):
        mine = [t for t in complete if t.params.get("family") == family]
        names = sorted(set.intersection(*(set(t.params) for t in mine)) - {"family"})
        if len(mine) < MIN_IMPORTANCE_TRIALS or not names:
            skipped.append(f"{family} ({len(mine)} complete trial(s); at least {MIN_IMPORTANCE_TRIALS} needed)")
            continue
        try:
            with warnings.catch_warnings():  # "few trials per regime": each plot's title says how many
                warnings.simplefilter("ignore", UserWarning)
                importances[family] = (len(mine), optuna.importance.get_param_importances(study, params=names))
        except (ValueError, RuntimeError) as exc:
            skipped.append(f"{family} ({exc})")
    return importances, skipped


def _importances_figure(plt: Any, importances: dict[str, tuple[int, dict[str, float]]]) -> Any:
    fig, axes = plt.subplots(1, len(importances), figsize=(4 * len(importances), 3), squeeze=False)
    for ax, (family, (n_trials, values)) in zip(axes[0], importances.items()):
        names = list(values)[::-1]
        ax.barh([n.removeprefix(f"{family}.") for n in names], [values[n] for n in names], color=_colour(family))
        ax.set_title(f"{family} ({n_trials} trials)")
        ax.set_xlabel("importance")
    fig.tight_layout()
    return fig


def _proposer(spec: dict, study: Any) -> str:
    """The proposals ``fit`` tried first (provenance ``proposals``, with predicted scores) against the scores their
    trials obtained: in the study's complete trials, or in the model file's leaderboard when the study is gone."""
    title = "Proposer: predicted against obtained"
    proposals = spec["provenance"].get("proposals") or []
    if not proposals:
        return _section(title, [("<p class='source'>The proposer did not run in this fit (the model file lists no "
                                 "proposals).</p>")])
    obtained = {(r["family"], _config_key(r["config"])): r["score"] for r in spec.get("leaderboard", [])}
    if study is not None:
        for t in study.trials:
            if t.state.name == "COMPLETE" and "config" in t.user_attrs:
                obtained[(t.user_attrs["family"], _config_key(t.user_attrs["config"]))] = t.value
    pairs = [(p["predicted_score"], obtained[key], p["family"]) for p in proposals
             if (key := (p["family"], _config_key(p["config"]))) in obtained]
    where = "the study" if study is not None else "the model file's leaderboard (the study is not at hand)"
    if not pairs:
        return _section(title, [_note(f"None of the {len(proposals)} proposals has a complete trial in {where}.")])
    return _section(title, [(f"<p class='source'>{len(pairs)} of {len(proposals)} proposals, with the score their "
                             f"trial obtained in {_e(where)}.</p>"), _plot(_proposer_figure, pairs)])


def _config_key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def _proposer_figure(plt: Any, pairs: list[tuple[float, float, str]]) -> Any:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for predicted, obtained, family in pairs:
        ax.scatter(predicted, obtained, color=_colour(family))
    lo = min(min(p, o) for p, o, _ in pairs)
    hi = max(max(p, o) for p, o, _ in pairs)
    ax.plot([lo, hi], [lo, hi], color="#999", linewidth=1)
    ax.set_xlabel("predicted score")
    ax.set_ylabel("obtained score")
    ax.set_title("proposer")
    return fig


def _scored(spec: dict, predictor: Predictor, table: Table | None, data_name: str) -> str:
    prov = spec["provenance"]
    title = "Held-back metrics" if prov.get("n_test_rows") else "Metrics"
    metrics = _table(list(spec["metrics"]), [[_num(v) for v in spec["metrics"].values()]])
    parts = [f"<p class='source'>Score on {_e(prov.get('score_source', '?'))} (model file).</p>", metrics]
    scored = prov.get("scored")
    if scored:
        y, pred = np.asarray(scored["y"]), np.asarray(scored["pred"], dtype=float)
        where = f"the {len(y)} rows the score was measured on, as the model file keeps them"
    elif table is not None:
        y, pred = _labelled(spec, table), predictor.fitted.predict_raw(table.X)
        where = f"every row of {data_name} (the model may have been fitted on them)"
    else:
        return _section(title, parts + [_note("The plots need the scored rows' predictions, which this model file "
                                              "does not keep; pass --data FILE to draw them on a table's rows.")])
    parts.append(f"<p class='source'>Plots over {_e(where)}.</p>")
    if spec["task"] == "regression":
        parts += [_plot(_actual_figure, y, pred), _plot(_residual_figure, y, pred)]
    else:
        parts += [_plot(_confusion_figure, spec["classes"], y, pred), _plot(_roc_figure, spec["classes"], y, pred)]
    return _section(title, parts)


def _actual_figure(plt: Any, y: np.ndarray, pred: np.ndarray) -> Any:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(y, pred, s=10, alpha=0.6)
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], color="#999", linewidth=1)
    ax.set_xlabel("actual")
    ax.set_ylabel("predicted")
    ax.set_title("predicted against actual")
    return fig


def _residual_figure(plt: Any, y: np.ndarray, pred: np.ndarray) -> Any:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(pred, y - pred, s=10, alpha=0.6)
    ax.axhline(0, color="#999", linewidth=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual - predicted")
    ax.set_title("residuals")
    return fig


def _confusion_figure(plt: Any, classes: list, y: np.ndarray, proba: np.ndarray) -> Any:
    from sklearn.metrics import confusion_matrix

    labels = [str(c) for c in classes]
    matrix = confusion_matrix(y, proba.argmax(axis=1), labels=np.arange(len(labels)))
    size = min(8.0, 2.5 + 0.45 * len(labels))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    if len(labels) <= 20:
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center",
                    color="white" if count > matrix.max() / 2 else "black", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 6 else 0)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title("confusion matrix")
    return fig


def _roc_figure(plt: Any, classes: list, y: np.ndarray, proba: np.ndarray) -> Any:
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    shown = [1] if len(classes) == 2 else [k for k in range(len(classes)) if 0 < np.sum(y == k) < len(y)]
    for k in shown[:MAX_ROC_CLASSES]:
        if 0 < np.sum(y == k) < len(y):
            fpr, tpr, _ = roc_curve(y == k, proba[:, k])
            auc = roc_auc_score(y == k, proba[:, k])
            ax.plot(fpr, tpr, label=f"{classes[k]} (AUC {auc:.3f})" if len(classes) > 2 else f"AUC {auc:.3f}")
    ax.plot([0, 1], [0, 1], color="#999", linewidth=1, linestyle="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC" + (" (one class against the rest)" if len(classes) > 2 else ""))
    ax.legend(fontsize=8, loc="lower right")
    return fig


def _importance(spec: dict, predictor: Predictor, table: Table | None, data_name: str) -> str:
    title = "Permutation feature importance"
    if table is None:
        return _section(title, [_note("This section needs the table's rows: pass --data FILE (the training table "
                                      "gives the rows the score was measured on).")])
    rows, where = _rows_for_importance(spec, table, data_name)
    X, y = table.X.iloc[rows].reset_index(drop=True), _labelled(spec, table)[rows]
    drops = permutation_importance(predictor, X, y, seed=spec["provenance"].get("seed", 0))
    metric = spec["provenance"].get("metric", "score")
    return _section(title, [
        (f"<p class='source'>Mean drop of the final model's {metric} when one column is shuffled "
         f"({IMPORTANCE_REPEATS} times), on {_e(where)}.</p>"), _plot(_permutation_figure, drops, metric)])


def permutation_importance(predictor: Predictor, X: pd.DataFrame, y: np.ndarray,
                           seed: int = 0) -> dict[str, tuple[float, float]]:
    """Each used column's mean and spread of the score's drop when its values are shuffled among the rows."""
    task = predictor.task
    base = selection_score(task, y, predictor.fitted.predict_raw(X))
    rng = np.random.default_rng(seed)
    drops = {}
    for column in [c["name"] for c in predictor.fitted.columns if c["kind"] not in ("constant", "id")]:
        scores = []
        for _ in range(IMPORTANCE_REPEATS):
            shuffled = X.copy()
            shuffled[column] = X[column].to_numpy()[rng.permutation(len(X))]
            scores.append(base - selection_score(task, y, predictor.fitted.predict_raw(shuffled)))
        drops[column] = (float(np.mean(scores)), float(np.std(scores)))
    return drops


def _permutation_figure(plt: Any, drops: dict[str, tuple[float, float]], metric: str) -> Any:
    top = sorted(drops, key=lambda c: drops[c][0], reverse=True)[:TOP_COLUMNS][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.8 + 0.3 * len(top)))
    ax.barh(top, [drops[c][0] for c in top], xerr=[drops[c][1] for c in top], color="C0")
    ax.axvline(0, color="#999", linewidth=1)
    ax.set_xlabel(f"drop in {metric}")
    ax.set_title("permutation importance" + (f" (top {TOP_COLUMNS})" if len(drops) > TOP_COLUMNS else ""))
    fig.tight_layout()
    return fig


# --- HTML and plot helpers -------------------------------------------------------------------


@contextmanager
def _plot_style() -> Iterator[None]:
    """Text stays text in the SVG (small, searchable) and the output does not change between runs."""
    plt = pyplot()
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "metagen", "font.size": 9}):
        yield


def _plot(draw: Any, *args: Any) -> str:
    plt = pyplot()
    fig = draw(plt, *args)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    svg = re.sub(r"<metadata>.*?</metadata>", "", buf.getvalue(), flags=re.DOTALL)  # a date: pages would differ per run
    return f'<figure class="plot">{svg[svg.index("<svg"):]}</figure>'


def _colour(family: str) -> str:
    return f"C{ALL.index(family)}" if family in ALL else "C9"


def _section(title: str, parts: list[str]) -> str:
    return f"<section><h2>{_e(title)}</h2>\n" + "\n".join(parts) + "\n</section>"


def _note(text: str) -> str:
    return f"<p class='note'>{_e(text)}</p>"


def _table(header: list[str], rows: list[list], text_columns: tuple[int, ...] = (), show_header: bool = True) -> str:
    def cell(tag: str, j: int, value: object) -> str:
        return f"<{tag}{' class=text' if j in text_columns else ''}>{_e(str(value))}</{tag}>"

    head = "<tr>" + "".join(cell("th", j, h) for j, h in enumerate(header)) + "</tr>" if show_header else ""
    body = "".join("<tr>" + "".join(cell("td", j, v) for j, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _num(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)
