"""``metagen bench maml``, ``adapt`` and ``ablate``: the meta-learning benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from metagen_cli._common import err, out, user_errors

SuiteOpt = typer.Option("sklearn", "--suite", help="A folder of PMLB-format tables, sklearn, or synthetic.")
SplitOpt = typer.Option(None, "--split", help="Only this split of the folder's manifest.csv (e.g. dev-eval).")
JsonOpt = typer.Option(None, "--json", help="Also write the table as JSON records here.")


def bench_maml(
    suite: str = SuiteOpt,
    split: Optional[str] = SplitOpt,
    meta_batch: int = typer.Option(16, help="Tasks per meta-gradient."),
    repeats: int = typer.Option(5, help="Timed repeats per row (median reported)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    compile_too: bool = typer.Option(False, "--compile", help="Add a torch.compile'd vmap row."),
    inner_steps: str = typer.Option("5,20,100,500", help="Inner-loop lengths of the MAML / first-order / iMAML rows."),
    inner_batch: int = typer.Option(4, help="Tasks per meta-gradient in the inner-loop-length rows."),
    max_unrolled_steps: int = typer.Option(500, help="Skip unrolled (second- and first-order) MAML beyond this."),
    json_path: Optional[Path] = JsonOpt,
) -> None:
    """Meta-training throughput: vmap against a per-task loop; MAML, first-order and iMAML by inner-loop length."""
    from metagen.bench.engine import bench_engines, bench_inner_steps
    from metagen.bench.harness import plain_table, suite_tables, write_json
    from metagen.meta_train import PRESETS, pick_device
    from metagen_cli.bench import _numbers
    from task_corpus import SamplerConfig, TaskSampler

    steps = _numbers(inner_steps, "--inner-steps")
    if not steps or any(n < 1 or n != int(n) for n in steps):
        raise typer.BadParameter("--inner-steps takes comma-separated whole numbers of steps, e.g. 5,20,100,500.")
    with user_errors():
        preset = PRESETS["small"]
        config = SamplerConfig(n_support=preset.n_support, n_query=preset.n_query, max_columns=preset.max_columns,
                               real_share=0.0 if suite == "synthetic" else 1.0)
        tables = [] if suite == "synthetic" else suite_tables(suite, split)
        sampler = TaskSampler(tables, config, seed=0, exclude_split=None)
        tasks, i = [], 0
        while sum(t.kind != "regression" for t in tasks) < max(meta_batch, inner_batch):
            tasks.append(sampler.sample(i))
            i += 1
        torch_device = pick_device(device)
        engines = bench_engines(tasks, meta_batch, repeats, torch_device, compile_too)
        lengths = bench_inner_steps(tasks, inner_batch, repeats, torch_device, tuple(map(int, steps)),
                                    max_unrolled_steps)
    out.print(plain_table(engines, "meta-gradient throughput (median of repeats)"))
    out.print(plain_table(lengths, "by inner-loop length: tasks per second and the autograd graph's saved memory"))
    if json_path is not None:
        write_json(json_path, {"engines": engines, "inner_steps": lengths})


def bench_adapt(
    suite: str = SuiteOpt,
    split: Optional[str] = SplitOpt,
    meta_model: Optional[Path] = typer.Option(None, help="Meta-model file (default: the shipped one)."),
    member: Optional[str] = typer.Option(None, help="Which member (default: the first)."),
    seed: int = typer.Option(0),
    json_path: Optional[Path] = JsonOpt,
) -> None:
    """Held-back score after K steps from the learned start versus K steps from a random init."""
    from metagen.bench.adapt import adapt_table, adapt_verdict, summarise_adapt
    from metagen.bench.harness import plain_table, suite_tables, write_json
    from metagen.errors import MetaGenError
    from metagen.meta_model import load_meta_model, shipped_meta_model

    with user_errors():
        meta = load_meta_model(meta_model) if meta_model else shipped_meta_model()
        if meta is None:
            raise MetaGenError("No meta-model is shipped with this build.", "Pass --meta-model FILE.")
        member = member or next(iter(meta.members))
        if member not in meta.members:
            raise MetaGenError(f"No member {member!r} in the meta-model.", f"Members: {', '.join(meta.members)}.")
        records = []
        for ref in suite_tables(suite, split):
            rows = adapt_table(ref, meta, member, seed)
            records += rows
            err.print(f"{ref.name}: " + "  ".join(f"{r['init']}@{r['k']} {r['score']:.3f}" for r in rows))
    out.print(plain_table(records, f"held-back score after K steps ({member})"))
    summary = summarise_adapt(records)
    out.print(plain_table(summary, "mean over tables"))
    out.print(plain_table([adapt_verdict(summary)], "the learned start against the random start at its best"))
    if json_path is not None:
        write_json(json_path, records)


def bench_posterior(
    suite: str = SuiteOpt,
    split: Optional[str] = SplitOpt,
    meta_model: Path = typer.Option(..., help="Meta-model file with a posterior member "
                                              "(`metagen meta-train --preset posterior`)."),
    member: Optional[str] = typer.Option(None, help="Which member (default: the first with a posterior)."),
    members: int = typer.Option(5, help="Networks per ensemble."),
    steps: int = typer.Option(100, help="Adam steps per network."),
    seed: int = typer.Option(0),
    json_path: Optional[Path] = JsonOpt,
) -> None:
    """Ensembles of networks adapted from samples of a learned posterior over starts, against random starts."""
    from metagen.bench.harness import plain_table, suite_tables, write_json
    from metagen.bench.posterior import posterior_table, summarise_posterior
    from metagen.errors import MetaGenError
    from metagen.meta_model import load_meta_model

    with user_errors():
        meta = load_meta_model(meta_model)
        with_posterior = [name for name, (arch, _) in meta.members.items() if arch.posterior]
        member = member or next(iter(with_posterior), None)
        if member not in with_posterior:
            raise MetaGenError(f"{meta_model} has no member with a posterior{f' named {member!r}' if member else ''}.",
                               "Meta-train one with `metagen meta-train --preset posterior`.")
        records = []
        for ref in suite_tables(suite, split):
            rows = posterior_table(ref, meta, member, members, steps, seed)
            records += rows
            err.print(f"{ref.name}: " + "  ".join(f"{r['ensemble']} {r['score']:.3f}" for r in rows))
    out.print(plain_table(records, f"ensembles of {members} networks, {steps} steps each ({member})"))
    out.print(plain_table(summarise_posterior(records), "mean over tables"))
    if json_path is not None:
        write_json(json_path, records)


def bench_ablate(
    suite: str = SuiteOpt,
    split: Optional[str] = SplitOpt,
    corpus: list[str] = typer.Option(
        ..., "--corpus", "-c",
        help="Meta-training tables, as `metagen meta-train` takes them (dev-eval tables never train).",
    ),
    variants: Optional[str] = typer.Option(None, help="Comma-separated variant names (default: all)."),
    steps: int = typer.Option(300, help="Meta-steps per architecture for every variant."),
    pool: int = typer.Option(1500, help="Tasks drawn once and shared by the variants."),
    seed: int = typer.Option(0),
    json_path: Optional[Path] = JsonOpt,
) -> None:
    """What each part of the learned start adds: fronts, Meta-SGD, FiLM, input scaling, supernet slices."""
    from metagen.bench.ablate import VARIANTS, run_ablation, summarise_ablation
    from metagen.bench.harness import plain_table, suite_tables, write_json
    from metagen.errors import MetaGenError
    from task_corpus import resolve_source

    with user_errors():
        chosen = VARIANTS
        if variants:
            names = [v.strip() for v in variants.split(",")]
            unknown = [n for n in names if n not in VARIANTS]
            if unknown:
                raise MetaGenError(f"Unknown variant(s): {', '.join(unknown)}.", f"Variants: {'; '.join(VARIANTS)}.")
            chosen = {n: VARIANTS[n] for n in names}
        eval_refs = suite_tables(suite, split)
        tables = [ref for spec in corpus for ref in resolve_source(spec)]
        records, reference, seconds = run_ablation(
            tables, eval_refs, chosen, steps=steps, pool=pool, seed=seed,
            on_variant=lambda name, s: err.print(f"{name}: meta-trained in {s:.0f}s, scored"),
        )
    summary = summarise_ablation(records, reference, seconds)
    out.print(plain_table(summary, f"ablation: mean held-back score on {len(eval_refs)} tables"))
    if json_path is not None:
        write_json(json_path, {"summary": summary, "records": records, "reference": reference})
