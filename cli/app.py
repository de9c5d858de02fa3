"""The ``metagen`` command. Exit codes: 0 success, 1 a user error (one line, no traceback), 2 usage,
130 interrupted (Ctrl-C; ``fit`` still writes the best model finished so far)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer
from metagen_cli._common import INTERRUPTED, err, out, user_errors
from metagen_cli.bench import bench_app
from metagen_cli.corpus import corpus_app
from metagen_cli.export import export_command
from metagen_cli.meta_train import meta_portfolio_command, meta_train_command
from metagen_cli.propose import propose_command
from metagen_cli.report import report_command
from metagen_cli.worker import local_workers, worker_command
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from metagen import distributed
from metagen.errors import MetaGenError

ZERO_SHOT_BUDGET = 60.0
"""A zero-shot fit's budget: its one trial is picked to take seconds; this caps it if the pick runs long."""

app = typer.Typer(
    help="metagen: tabular data in, a ready model file out. A meta-learned start, an Optuna search, no pickle.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _default_output(data: Path) -> Path:
    if str(data) == "-":
        return Path("stdin.metagen")
    name = data.name
    for suffix in (".gz", ".csv", ".tsv", ".txt", ".parquet", ".pq", ".xlsx", ".xlsm"):
        name = name.removesuffix(suffix)
    return Path(f"{name}.metagen")


def _study_name(output: Path, storage: str, resume: bool) -> str:
    """A new study per fit; ``--resume`` continues the newest one written for this output."""
    import optuna

    from metagen.storage import make_storage

    stem = output.stem
    if resume:
        with contextlib.suppress(Exception):
            names = [s.study_name for s in optuna.get_all_study_summaries(make_storage(storage))
                     if s.study_name.startswith(f"{stem}-")]
            if names:
                return max(names)
        raise MetaGenError(f"No earlier study for {output} in {storage} to resume.", "Run without --resume.")
    return f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"


@app.command()
def fit(
    data: Path = typer.Argument(..., help="CSV (any delimiter; .gz works), TSV, Parquet or Excel file; - reads CSV from standard input."),
    target: Optional[str] = typer.Option(None, "--target", "-t", help="Target column. Default: the last column if it is named target, class, label or y."),
    task: Optional[str] = typer.Option(None, help="binary, multiclass or regression. Default: inferred from the target."),
    time_budget: float = typer.Option(60.0, "--time-budget", "-b", help="Seconds for the whole fit; 0: --zero-shot."),
    zero_shot: bool = typer.Option(False, "--zero-shot", help="No search: train the proposer's best quick proposal and write it, in seconds."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Model file to write. Default: <data name>.metagen"),
    seed: int = typer.Option(0, help="Random seed."),
    n_trials: Optional[int] = typer.Option(None, "--n-trials", help="Run exactly this many trials, however long they take (reproducible runs)."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage: sqlite:///f.db, journal:///f.log or postgresql://... Default: sqlite:///<output>.optuna.db"),
    resume: bool = typer.Option(False, help="Continue the newest study for this output (or --study) in --storage."),
    study: Optional[str] = typer.Option(None, "--study", help="Name the study, to share it with `metagen worker` processes (elsewhere) that name it too."),
    workers: int = typer.Option(1, "--workers", help="Processes on this machine searching the one study (this one included), one thread each."),
    artifacts: Optional[Path] = typer.Option(None, "--artifacts", help="Shared study: the folder where every worker leaves its best trials. Default: beside a SQLite or journal file."),
    heartbeat: int = typer.Option(10, "--heartbeat", help="Shared study: seconds between a running trial's heartbeats; a trial silent for 4 of them is run again."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Most gradient steps per trial."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the final summary."),
    no_meta: bool = typer.Option(False, "--no-meta", help="Search from each family's defaults and random starts only (the reference search)."),
    families: str = typer.Option("mlp,gbdt,forest,linear", "--families", "-f", help="Model families to search, comma-separated."),
    infer_limit: Optional[float] = typer.Option(None, "--infer-limit", help="Most seconds per row the model may take to predict (e.g. 1e-5); the ensemble keeps within it."),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="Also write the ensemble as an ONNX model (its inputs are the preprocessed views)."),
    test_size: float = typer.Option(0.0, "--test-size", help="Share of rows held back for the reported score; the members are then refit on every row. 0: report the out-of-fold score."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write an HTML report of the fit (plots inline; see `metagen report`)."),
) -> None:
    """Search model families for a table and write the best ensemble as a model file."""
    started = time.monotonic()  # the budget counts reading the file too
    from metagen.families import parse_families
    from metagen.fit import FitOptions, fit_table
    from metagen.model_file import save_model
    from metagen.storage import default_artifacts
    from metagen.table import read_table

    with user_errors():
        if task is not None and task not in ("binary", "multiclass", "regression"):
            raise MetaGenError(f"Unknown --task {task!r}.", "Use binary, multiclass or regression.")
        if report is not None:
            from metagen.extras import pyplot

            pyplot()  # a missing matplotlib is said before the fit, not after it
        if workers < 1 or heartbeat < 1:
            raise MetaGenError("--workers and --heartbeat must be at least 1.")
        if workers > 1 and str(data) == "-":
            raise MetaGenError("--workers needs a data file the workers read too, not standard input.",
                               "Save the table to a file and pass its path.")
        table = read_table(data, target=target, task=task)  # type: ignore[arg-type]
        output = output or _default_output(data)
        storage = storage or f"sqlite:///{output.with_suffix('.optuna.db')}"
        shared = study is not None or workers > 1  # other processes run this study's trials too
        _describe(table)
        if time_budget < 0:
            raise MetaGenError(f"--time-budget must be seconds >= 0, got {time_budget:g}.", "Pass e.g. 60, or 0 for --zero-shot.")
        zero_shot = zero_shot or time_budget == 0
        time_budget = time_budget or ZERO_SHOT_BUDGET
        options = FitOptions(
            time_budget=max(1.0, time_budget - (time.monotonic() - started)), n_trials=n_trials, zero_shot=zero_shot,
            seed=seed, storage=storage,
            study_name=study or _study_name(output, storage, resume), resume=resume, max_steps=max_steps,
            use_meta=not no_meta, families=parse_families(families), test_size=test_size, infer_limit=infer_limit,
            shared=shared, heartbeat=heartbeat,
            artifacts=(str(artifacts or default_artifacts(storage) or output.with_suffix(".artifacts"))
                       if shared else None),
        )
        with Progress(
            TextColumn("[bold]search[/]"), BarColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
            console=err, disable=quiet, transient=False,
        ) as bar:
            job = bar.add_task("starting", total=time_budget)

            def on_progress(p) -> None:
                first = "" if p.first_model_s is None else f"  first model at {p.first_model_s:.1f}s"
                bar.update(job, completed=min(p.elapsed, p.budget),
                           description=f"trial {p.n_done} ({p.family})  best {table.metric} {_fmt(p.best_score)}"
                                       f"{first}  {p.elapsed:.0f}/{time_budget:.0f}s")

            with local_workers(workers - 1, data, storage, options.study_name):
                fitted = fit_table(table, options, on_progress)
        save_model(fitted, output)
        if onnx is not None:
            from metagen.onnx_export import export_onnx

            export_onnx(fitted, onnx)
        if report is not None:
            from metagen.report import write_report

            write_report(output, report, table=table, data_name=str(data), storage=storage)
    _leaderboard(fitted.leaderboard, table.metric)
    metrics = "  ".join(f"{k} {_fmt(v)}" for k, v in fitted.metrics.items())
    out.print(f"score on {fitted.provenance['score_source']}: {metrics}")
    out.print(f"wrote [bold]{output}[/] in {fitted.provenance['fit_seconds']:.1f}s "
              f"({fitted.provenance['n_trials_complete']} trials, {fitted.provenance['n_trials_pruned']} pruned, "
              f"ensemble of {len(fitted.members)}; "
              f"study '{options.study_name}' in {storage})" + (f"; ONNX in {onnx}" if onnx else "")
              + (f"; report in {report}" if report else ""))
    if fitted.provenance["interrupted"]:
        err.print(f"interrupted: wrote best model so far ({fitted.provenance['n_trials_complete']} trials)")
        raise typer.Exit(INTERRUPTED)


def _describe(table) -> None:
    kinds: dict[str, int] = {}
    for c in table.columns:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    kind_text = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    guessed = " (taken: last column)" if table.target_guessed else ""
    classes = f", {len(table.classes)} classes" if table.classes else ""
    out.print(f"read {table.n_rows} rows, {len(table.columns)} feature columns ({kind_text})")
    out.print(f"target [bold]{table.target}[/]{guessed}: {table.task}{classes}; metric {table.metric}")
    for note in table.notes:
        err.print(f"[yellow]warning:[/] {note}")
    unused = [c.name for c in table.columns if not c.used]
    if unused:
        out.print(f"ignoring constant or id-like column(s): {', '.join(unused[:10])}")


def _leaderboard(rows: list[dict], metric: str, top: int = 8) -> None:
    """The best trials and every ensemble member, with family, key parameters, score and weight."""
    shown = [r for i, r in enumerate(rows) if i < top or r.get("weight", 0) > 0]
    t = RichTable(title="leaderboard (out-of-fold or validation score)")
    for col in ("trial", "family", metric, "weight", "seconds", "parameters"):
        t.add_column(col, justify="left" if col == "parameters" else "right")
    for r in shown:
        t.add_row(str(r["trial"]), r["family"], _fmt(r["score"]), _fmt(r.get("weight", 0.0)),
                  _fmt(r["seconds"] if r.get("seconds") is not None else float("nan")), r["params"])
    out.print(t)


@app.command()
def predict(
    model: Path = typer.Argument(..., help="Model file from `metagen fit`."),
    data: Path = typer.Argument(..., help="CSV, TSV, Parquet or Excel file (- : CSV on standard input) with the model's feature columns (extra columns are ignored)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="CSV to write (Parquet for .parquet, tab-separated for .tsv). Default: standard output."),
    proba: bool = typer.Option(False, "--proba", help="Add one probability column per class."),
) -> None:
    """Predict for every row of a CSV."""
    import pandas as pd

    from metagen.predictor import load
    from metagen.table import read_frame, write_frame

    with user_errors():
        predictor = load(model)
        frame = read_frame(data)
        result = pd.DataFrame({predictor.fitted.target: predictor.predict(frame)})
        if proba:
            if predictor.task == "regression":
                raise MetaGenError("--proba needs a classification model; this one does regression.")
            probs = predictor.predict_proba(frame)
            for k, label in enumerate(predictor.classes_):
                result[f"proba_{label}"] = probs[:, k]
        if output is None:
            result.to_csv(sys.stdout, index=False)
        else:
            write_frame(result, output)
            err.print(f"wrote {len(result)} predictions to {output}")


@app.command()
def info(
    model: Path = typer.Argument(..., help="Model file."),
    as_json: bool = typer.Option(False, "--json", help="Print the spec as JSON (without weights)."),
) -> None:
    """Show a model file's schema, task, ensemble members, metrics and provenance."""
    from metagen.model_file import read_spec

    with user_errors():
        spec, _ = read_spec(model)
    if as_json:
        spec = {k: v for k, v in spec.items() if k != "views"}
        print(json.dumps(spec, indent=1))
        return
    out.print(f"[bold]{model}[/]: {spec['task']} model of target '{spec['target']}'"
              + (f" ({len(spec['classes'])} classes)" if spec["classes"] else ""))
    t = RichTable(title="columns")
    for col in ("name", "kind", "unique", "missing"):
        t.add_column(col)
    for c in spec["columns"]:
        t.add_row(c["name"], c["kind"], str(c["n_unique"]), str(c["n_missing"]))
    out.print(t)
    t = RichTable(title="ensemble members")
    for col in ("member", "family", "weight", "score", "models", "parameters"):
        t.add_column(col, justify="left" if col == "parameters" else "right")
    for i, member in enumerate(spec["members"]):
        t.add_row(str(i + 1), member["family"], _fmt(member["weight"]), _fmt(member.get("score", float("nan"))),
                  str(len(member["parts"])), " ".join(f"{k}={_fmt(v)}" for k, v in member["config"].items()))
    out.print(t)
    source = spec["provenance"].get("score_source", "held-back rows")
    out.print(f"score on {source}: " + ("  ".join(f"{k} {_fmt(v)}" for k, v in spec["metrics"].items()) or "none"))
    out.print("provenance: " + ", ".join(f"{k}={v}" for k, v in {**spec["provenance"], **spec["versions"]}.items()
                                         if k != "scored"))  # the scored rows' predictions are for the report


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help="Model file."),
    data: Path = typer.Argument(..., help="CSV, TSV, Parquet or Excel file that has the target column."),
    as_json: bool = typer.Option(False, "--json", help="Print metrics as JSON."),
) -> None:
    """Score a model on a labelled table."""
    import numpy as np

    from metagen.metrics import all_metrics
    from metagen.predictor import load
    from metagen.table import make_table, read_frame

    with user_errors():
        predictor = load(model)
        fitted = predictor.fitted
        table = make_table(read_frame(data), target=fitted.target, task=fitted.task)  # type: ignore[arg-type]
        if fitted.classes is not None:
            index = {str(c): i for i, c in enumerate(fitted.classes)}
            labels = [str(c) for c in table.classes]
            unknown = [c for c in labels if c not in index]
            if unknown:
                raise MetaGenError(f"Target has classes the model never saw: {', '.join(unknown[:5])}.")
            y = [index[labels[k]] for k in table.y]
            pred = predictor.predict_proba(table.X)
        else:
            y, pred = table.y, predictor.predict(table.X)
        metrics = all_metrics(fitted.task, np.asarray(y), pred)
        metrics["n_rows"] = table.n_rows
    if as_json:
        print(json.dumps(metrics))
    else:
        out.print("  ".join(f"{k} {_fmt(v)}" for k, v in metrics.items()))


app.command("export")(export_command)
app.command("report")(report_command)
app.add_typer(corpus_app, name="corpus")
app.command("meta-train")(meta_train_command)
app.command("meta-portfolio")(meta_portfolio_command)
app.command("propose")(propose_command)
app.command("worker")(worker_command)
app.add_typer(bench_app, name="bench")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    distributed.run_then_exit(app)


if __name__ == "__main__":
    main()
