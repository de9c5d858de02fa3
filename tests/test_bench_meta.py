"""`metagen bench adapt` and `metagen bench maml` run end to end and write their records."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from metagen.maml import MetaArch, init_params
from metagen.meta_model import MetaModel, save_meta_model
from metagen_cli.app import app


@pytest.fixture
def suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("METAGEN_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 4))
    root = tmp_path / "suite"
    root.mkdir()
    pd.DataFrame(X, columns=list("abcd")).assign(target=(X[:, 0] > 0).astype(int)).to_csv(
        root / "tiny_binary.tsv.gz", sep="\t", index=False)
    pd.DataFrame(X, columns=list("abcd")).assign(target=X[:, 1] - X[:, 2]).to_csv(
        root / "tiny_regression.tsv.gz", sep="\t", index=False)
    return root


def test_bench_adapt_records_every_init_and_k(suite: Path, tmp_path: Path) -> None:
    arch = MetaArch(depth=1, width=16, gen_width=8)
    meta = save_meta_model(MetaModel({arch.name: (arch, init_params(arch))}), tmp_path / "meta.safetensors")
    out = tmp_path / "adapt.json"
    run = CliRunner().invoke(app, ["bench", "adapt", "--suite", str(suite), "--meta-model", str(meta),
                                   "--json", str(out)])
    assert run.exit_code == 0, run.output
    records = json.loads(out.read_text())
    inits = {(r["init"], r["k"]) for r in records}
    assert ("learned", 0) in inits and ("random", 500) in inits and ("learned+adam", 50) in inits and ("learned+adam", 20) in inits
    assert {r["dataset"] for r in records} == {"tiny_binary", "tiny_regression"}
    learned_binary = [r["score"] for r in records if r["dataset"] == "tiny_binary" and r["init"] == "learned+adam"]
    assert min(learned_binary) > 0.8  # an easy table: the adapted network must learn it
    assert "mean over tables" in run.output and "random start at its best" in run.output


def test_bench_maml_compares_engines_and_inner_loop_lengths(tmp_path: Path) -> None:
    out = tmp_path / "maml.json"
    run = CliRunner().invoke(app, ["bench", "maml", "--suite", "synthetic", "--meta-batch", "2", "--repeats", "1",
                                   "--inner-steps", "2,6", "--inner-batch", "2", "--max-unrolled-steps", "3",
                                   "--json", str(out)])
    assert run.exit_code == 0, run.output
    result = json.loads(out.read_text())
    rows = result["engines"]
    assert {(r["engine"], r["order"]) for r in rows} >= {("loop", "first"), ("vmap", "second")}
    assert all(r["tasks_per_s"] > 0 and r["status"] == "ok" for r in rows)
    assert all(r["speedup"] == 1.0 for r in rows if r["engine"] == "loop")
    lengths = {(r["algorithm"], r["inner_steps"]): r for r in result["inner_steps"]}
    assert set(lengths) == {(a, k) for a in ("maml", "fomaml", "imaml") for k in (2, 6)}
    assert lengths[("maml", 6)]["status"].startswith("skipped") and lengths[("fomaml", 6)]["tasks_per_s"] is None
    assert lengths[("imaml", 6)]["status"] == "ok" and lengths[("imaml", 6)]["tasks_per_s"] > 0
    assert lengths[("imaml", 2)]["graph_mb"] == lengths[("imaml", 6)]["graph_mb"] < lengths[("maml", 2)]["graph_mb"]
    bad = CliRunner().invoke(app, ["bench", "maml", "--suite", "synthetic", "--inner-steps", "5,x"])
    assert bad.exit_code != 0 and "--inner-steps" in bad.output


def test_meta_train_writes_a_meta_model_the_search_can_load(suite: Path, tmp_path: Path) -> None:
    from metagen.meta_model import load_meta_model

    out = tmp_path / "meta.safetensors"
    run = CliRunner().invoke(app, ["meta-train", "-c", str(suite), "--preset", "small", "--steps", "2",
                                   "--amp", "off", "--out", str(out)])
    assert run.exit_code == 0, run.output
    meta = load_meta_model(out)
    assert list(meta.members) == ["d1w32"] and meta.spec["train_config"]["steps"] == 2
    bad = CliRunner().invoke(app, ["meta-train", "-c", str(suite), "--preset", "small", "--amp", "fp8"])
    assert bad.exit_code == 1 and "Unknown mixed-precision mode" in bad.output


def test_meta_train_runs_imaml(suite: Path, tmp_path: Path) -> None:
    from metagen.meta_model import load_meta_model

    out = tmp_path / "meta.safetensors"
    run = CliRunner().invoke(app, ["meta-train", "-c", str(suite), "--preset", "small", "--steps", "2",
                                   "--algorithm", "imaml", "--amp", "off", "--out", str(out)])
    assert run.exit_code == 0, run.output
    assert load_meta_model(out).spec["train_config"]["algorithm"] == "imaml"
    bad = CliRunner().invoke(app, ["meta-train", "-c", str(suite), "--preset", "small", "--algorithm", "implicit"])
    assert bad.exit_code == 1 and "imaml" in bad.output


def test_bench_ablate_scores_every_variant_against_the_random_reference(suite: Path, tmp_path: Path) -> None:
    out = tmp_path / "ablate.json"
    run = CliRunner().invoke(app, ["bench", "ablate", "--suite", str(suite), "-c", str(suite), "--steps", "1",
                                   "--pool", "16", "--variants", "base,untrained,pca-front,slice-d3w256,family-d3w256",
                                   "--json", str(out)])
    assert run.exit_code == 0, run.output
    result = json.loads(out.read_text())
    summary = {r["variant"]: r for r in result["summary"]}
    assert list(summary) == ["base", "untrained", "pca-front", "slice-d3w256", "family-d3w256", "random100"]
    # a supernet and the family member of the same shape are trained apart, not shared
    assert summary["slice-d3w256"]["inner+adam20"] != summary["family-d3w256"]["inner+adam20"]
    assert {(r["variant"], r["k"]) for r in result["records"]} >= {("pca-front", "start"), ("base", "inner+adam20")}
    assert all(np.isfinite(r["score"]) for r in result["records"])
    assert set(result["reference"]) == {"tiny_binary", "tiny_regression"}
    unknown = CliRunner().invoke(app, ["bench", "ablate", "--suite", str(suite), "-c", str(suite),
                                       "--variants", "nope"])
    assert unknown.exit_code == 1 and "Unknown variant" in unknown.output
