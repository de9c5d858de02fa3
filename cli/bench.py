"""``metagen bench``: benchmarks that share one harness and one record format (metagen.bench)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from metagen_cli._common import err, out, user_errors
from metagen_cli.bench_meta import bench_ablate, bench_adapt, bench_maml, bench_posterior

from metagen.extras import pyplot
from metagen.families import parse_families

bench_app = typer.Typer(
    help="Benchmarks on a suite of tables (a PMLB-format folder, `sklearn` or `synthetic`); records as CSV and JSON.",
    no_args_is_help=True,
)


def _numbers(text: str, option: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"{option} takes comma-separated numbers, e.g. 10,30,60.") from None


@bench_app.command()
def peers(
    suite: str = typer.Option(..., "--suite", help="Folder of PMLB-format tables, `sklearn` or `synthetic`."),
    split: Optional[str] = typer.Option(None, "--split", help="Only tables of this manifest split, e.g. dev-eval."),
    budgets: str = typer.Option("10,30,60", "--budgets", help="Seconds per fit for budgeted methods, comma-separated."),
    seeds: int = typer.Option(1, "--seeds", help="Seeded train/test splits per table (seeds 0..N-1)."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Only these methods, comma-separated (default: all present); method@B runs that method at budget B only."),
    out_dir: Path = typer.Option(Path("bench-results/peers"), "--out", help="Folder for runs.csv, summary.json, the plot."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Run records as JSON. Default: <out>/runs.json"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG of normalised score against fit time. Default: <out>/anytime.png"),
    max_train_rows: Optional[int] = typer.Option(None, "--max-train-rows", help="Subsample larger training parts (test parts stay whole)."),
    test_size: float = typer.Option(0.25, "--test-size", help="Share of each table held out for scoring."),
    threads: int = typer.Option(2, "--threads", help="Threads each method may use; runs are sequential."),
    families: Optional[str] = typer.Option(None, "--families", "-f", help="Model families for metagen's methods "
                                           "(e.g. mlp); other methods are unaffected. Use a separate --out."),
) -> None:
    """Every method fits on each table's train part and is scored on its test part, one process per run.

    Re-running with the same --out skips runs already in runs.csv.
    """
    from metagen.bench import METHODS, BenchConfig, available, run_benchmark, summarise, summary_table, write_json
    from metagen.bench.harness import anytime_plot

    budget_list = _numbers(budgets, "--budgets")
    chosen, labels = METHODS, None
    if methods is not None:
        items = [m.strip() for m in methods.split(",") if m.strip()]
        names = list(dict.fromkeys(m.split("@")[0] for m in items))
        if any("@" in m for m in items):  # method@budget: exactly these runs
            labels = {m for m in items if "@" in m}
            budget_list = sorted({*budget_list, *_numbers(",".join(m.split("@")[1] for m in labels), "--methods")})
            labels = {f"{m.split('@')[0]}@{float(m.split('@')[1]):g}" for m in labels}
        unknown = sorted(set(names) - {m.name for m in METHODS})
        if unknown:
            raise typer.BadParameter(f"Unknown method(s) {', '.join(unknown)}; known: {', '.join(m.name for m in METHODS)}.")
        chosen = [m for m in METHODS if m.name in names]
    present, absent = available(chosen)
    for name, why in absent.items():
        err.print(f"[yellow]absent:[/] {name} ({escape(why)})", highlight=False)
    with user_errors():
        family_list = None if families is None else parse_families(families)
    config = BenchConfig(suite, split, test_size, max_train_rows, threads, families=family_list)

    def report(record, i: int, total: int) -> None:
        detail = f"score {record.score:.4f}  fit {record.fit_s:.1f}s" if record.status == "ok" else record.message
        err.print(f"[{i}/{total}] {record.dataset} {record.method}: {record.status}  {detail}", highlight=False)

    with user_errors():
        pyplot()  # say a missing matplotlib before the runs, not after them
        records = run_benchmark(config, present, budget_list, list(range(seeds)), out_dir / "runs.csv", report,
                                labels)
    rows = summarise(records)
    title = f"peers on {suite}" + (f" ({split})" if split else "") + (f", families {families}" if families else "")
    out.print(summary_table(rows, title))
    write_json(json_path or out_dir / "runs.json", [vars(r) for r in records])
    write_json(out_dir / "summary.json", {"suite": suite, "split": split, "budgets": budget_list,
                                          "absent": absent, "methods": rows})
    anytime_plot(rows, plot or out_dir / "anytime.png", title)
    out.print(f"wrote {out_dir / 'runs.csv'}, {json_path or out_dir / 'runs.json'}, {out_dir / 'summary.json'}, "
              f"{plot or out_dir / 'anytime.png'}")


@bench_app.command()
def compare(
    folders: list[str] = typer.Argument(..., help="Folders `bench peers --out` wrote; LABEL=FOLDER names its "
                                        "methods LABEL:method (e.g. before=peers-a after=peers-b)."),
    against: list[str] = typer.Option([], "--against", help="Also count, per method, the tables where it is "
                                      "ahead of, level with or behind this method (repeatable)."),
) -> None:
    """One summary of runs from several folders, normalised together: two versions of the code side by side."""
    from metagen.bench import summarise, summary_table
    from metagen.bench.harness import head_to_head, labelled_records, plain_table

    with user_errors():
        pairs = [(arg.split("=", 1)[0], Path(arg.split("=", 1)[1])) if "=" in arg else (None, Path(arg))
                 for arg in folders]
        records = labelled_records(pairs)
        rows = summarise(records)
        counts = [row for reference in against for row in head_to_head(records, reference)]
    out.print(summary_table(rows, "runs of " + ", ".join(folders)))
    if counts:
        out.print(plain_table(counts, "tables ahead / level (within 1e-4) / behind"))


bench_app.command("maml")(bench_maml)
bench_app.command("adapt")(bench_adapt)
bench_app.command("ablate")(bench_ablate)
bench_app.command("posterior")(bench_posterior)


@bench_app.command()
def predict(
    rows: int = typer.Option(100_000, "--rows", help="Rows of the synthetic table; every path predicts all of them at once."),
    columns: int = typer.Option(10, "--columns", help="Feature columns: this many minus one numeric, plus one categorical."),
    repeats: int = typer.Option(5, "--repeats", help="Timed runs per path (median reported), after one untimed run."),
    seed: int = typer.Option(0, "--seed", help="Seeds the table and every model."),
    threads: int = typer.Option(1, "--threads", help="Threads for scikit-learn, BLAS and torch while fitting and predicting."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the records as JSON here."),
) -> None:
    """Predict throughput (rows/s): scikit-learn's trees against their exported node arrays, and whole ensembles."""
    from metagen.bench.harness import plain_table, write_json
    from metagen.bench.predict import predict_throughput

    if rows < 10 or columns < 2 or repeats < 1 or threads < 1:
        raise typer.BadParameter("--rows must be at least 10, --columns 2, --repeats and --threads 1.")
    with user_errors():
        records = predict_throughput(rows, columns, seed, repeats, threads)
    shown = [{
        "model": r["model"], "path": r["path"], "rows/s": int(round(r["rows_per_s"])),
        "ratio to scikit-learn": r["ratio"],
        "max abs diff": "-" if r["max_abs_diff"] != r["max_abs_diff"] else f"{r['max_abs_diff']:.1e}",
        "detail": r["detail"],
    } for r in records]
    out.print(plain_table(shown, f"predict throughput: {rows} rows x {columns} columns, batch = all rows, "
                                 f"median of {repeats}, {threads} thread(s)"))
    if json_path is not None:
        write_json(json_path, {"rows": rows, "columns": columns, "repeats": repeats, "seed": seed,
                               "threads": threads, "records": records})


@bench_app.command()
def storage(
    trials: int = typer.Option(200, "--trials", help="Trivial trials per storage."),
    postgres: Optional[str] = typer.Option(None, "--postgres", help="Also a PostgreSQL server: postgresql://user@host:port/db (a new study is made there)."),
) -> None:
    """Per-trial cost of the study storages (in memory, SQLite, journal file, PostgreSQL), trials that train nothing."""
    from metagen.bench.harness import plain_table
    from metagen.bench.storage import storage_overhead

    urls = {"memory": None, "sqlite": "sqlite:///{tmp}/s.db", "journal": "journal:///{tmp}/s.log"}
    if postgres is not None:
        urls["postgresql"] = postgres
    with user_errors():
        rows = storage_overhead(trials, urls)
    out.print(plain_table([{k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()} for r in rows],
                          f"storage cost per trial: {trials} trials each, heartbeat on for RDB storages"))


@bench_app.command()
def propose(
    suite: str = typer.Option(..., "--suite", help="Folder of PMLB-format tables, `sklearn` or `synthetic`."),
    split: Optional[str] = typer.Option(None, "--split", help="Only tables of this manifest split, e.g. dev-eval."),
    max_rows: Optional[int] = typer.Option(None, "--max-rows", help="Rows kept per table (default: the rows the proposer learned from)."),
    seed: int = typer.Option(0, "--seed"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the per-table rows and the summary here."),
) -> None:
    """The shipped proposer's picks against a default, the static portfolio and random configurations, run live."""
    from metagen.bench.harness import plain_table, suite_tables, write_json
    from metagen.bench.propose import bench_propose, strategy_rows, summary
    from metagen.proposer import TOP_K
    from metagen.errors import MetaGenError
    from metagen.meta_model import shipped_meta_model

    def shown(row: dict) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}

    with user_errors():
        meta = shipped_meta_model()
        if meta is None or "proposer" not in meta.spec:
            raise MetaGenError("This build of metagen ships no proposer.", "Build one with `metagen meta-portfolio`.")
        refs = suite_tables(suite, split)
        rows = bench_propose(refs, meta, max_rows, seed,
                             on_table=lambda r: err.print(f"{r['table']}: ranking top-1 {r['ranking_top1']:.3f}, "
                                                          f"default {r['default']:.3f}", highlight=False))
    mean = summary(rows)
    out.print(plain_table([shown(r) for r in rows], "normalised score per table (1 = best configuration run there)"))
    out.print(plain_table(strategy_rows(mean), f"mean over {len(rows)} tables; the ranking proposer's top-{TOP_K} "
                                              f"closes {mean['gap_closed_of_mean']:.0%} of the default's gap to the best"))
    if json_path is not None:
        write_json(json_path, {"suite": suite, "split": split, "rows": rows, "summary": mean})
