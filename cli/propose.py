"""``metagen propose``: what the meta-model would try first on a table, and what it expects of each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table as RichTable

from metagen_cli._common import user_errors

out = Console()


def propose_command(
    data: Path = typer.Argument(..., help="CSV file (any delimiter; .gz works)."),
    target: Optional[str] = typer.Option(None, "--target", "-t", help="Target column (as fit takes it)."),
    task: Optional[str] = typer.Option(None, help="binary, multiclass or regression. Default: inferred."),
    families: str = typer.Option("mlp,gbdt,forest,linear", "--families", "-f", help="Model families to rank."),
    time_budget: float = typer.Option(60.0, "--time-budget", "-b", help="The fit budget the 'tried' order is for."),
    top: int = typer.Option(10, help="Proposals to show."),
    as_json: bool = typer.Option(False, "--json", help="Print every proposal as JSON (for pipelines)."),
    seed: int = typer.Option(0),
) -> None:
    """Rank configurations of every family for a table: predicted score, fit time, and the order fit tries."""
    from metagen.errors import MetaGenError
    from metagen.families import FAMILIES, parse_families
    from metagen.fit import MAX_PROPOSALS, FitOptions, prepare_data, rank_proposals
    from metagen.meta_model import shipped_meta_model
    from metagen.proposer import order_by_gain
    from metagen.table import read_table

    with user_errors():
        if task is not None and task not in ("binary", "multiclass", "regression"):
            raise MetaGenError(f"Unknown --task {task!r}.", "Use binary, multiclass or regression.")
        table = read_table(data, target=target, task=task)  # type: ignore[arg-type]
        options = FitOptions(families=parse_families(families), seed=seed)
        meta = shipped_meta_model()
        ranked = rank_proposals(table, prepare_data(table, options, meta), meta, options.families, seed)
        if not ranked:
            raise MetaGenError("This build of metagen ships no proposer.", "Build one with `metagen meta-portfolio`.")
        tried = {id(p): n + 1 for n, p in enumerate(order_by_gain(ranked, time_budget, MAX_PROPOSALS))}
    if as_json:
        print(json.dumps([{"rank": r + 1, "family": p.candidate.family, "config": p.candidate.config,
                           "predicted_score": p.score, "predicted_seconds": p.seconds, "spread": p.spread,
                           "tried": tried.get(id(p))} for r, p in enumerate(ranked)], indent=1))
        return
    kind = meta.spec["proposer"]["kind"] if meta is not None else ""
    grid = RichTable(title=f"{kind} proposer: {table.n_rows} rows, {len(table.columns)} columns, {table.task}")
    for name in ("rank", "family", "key parameters", "predicted score", "± spread", "predicted s", "tried"):
        grid.add_column(name, justify="left" if name in ("family", "key parameters") else "right")
    for r, p in enumerate(ranked[:top]):
        grid.add_row(str(r + 1), p.candidate.family, FAMILIES[p.candidate.family]().summary(p.candidate.config),
                     f"{p.score:.3f}", f"{p.spread:.3f}", f"{p.seconds:.2f}", str(tried.get(id(p), "")))
    out.print(grid)
    out.print(f"predicted score: 1 = the best of the configurations a meta-train table ran, 0 = the worst. "
              f"'tried': the order a {time_budget:g} s fit enqueues them (expected gain per second).")
