"""``metagen report``: the HTML report of a model file, made at any time after the fit."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from metagen_cli._common import err, user_errors


def report_command(
    model: Path = typer.Argument(..., help="Model file from `metagen fit`."),
    output: Path = typer.Option(Path("report.html"), "--output", "-o", help="HTML file to write."),
    data: Optional[Path] = typer.Option(None, "--data", help="The table (CSV, TSV, Parquet, Excel): adds the permutation importance and the target's full distribution."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage URL of the fit's study. Default: sqlite:///<model>.optuna.db beside the model."),
) -> None:
    """Write one self-contained HTML page: data, leaderboard, search, metrics and plots of a fit."""
    from metagen.model_file import read_spec
    from metagen.report import write_report
    from metagen.table import make_table, read_frame

    with user_errors():
        table = None
        if data is not None:
            spec, _ = read_spec(model)
            table = make_table(read_frame(data), target=spec["target"], task=spec["task"])
        write_report(model, output, table=table, data_name=str(data or ""), storage=storage)
    err.print(f"wrote {output}")
