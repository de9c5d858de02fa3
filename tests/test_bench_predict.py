"""`metagen bench predict` times every path on a small table and its exported trees match scikit-learn."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metagen_cli._common import out as console
from metagen_cli.app import app

MODELS = ["HistGradientBoosting", "RandomForest (100 trees)", "metagen ensemble (8 trials)",
          "two-network ensemble (mlp)"]


def test_bench_predict_reports_every_path_and_exported_trees_match(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "_width", 240)  # one table row per line, nothing wrapped
    out = tmp_path / "predict.json"
    run = CliRunner().invoke(app, ["bench", "predict", "--rows", "2000", "--repeats", "1", "--json", str(out)])
    assert run.exit_code == 0, run.output
    assert "predict throughput" in run.output and "rows/s" in run.output
    records = json.loads(out.read_text())["records"]
    paths = {(r["model"], r["path"]) for r in records}
    expected = {(m, "scikit-learn") for m in MODELS[:2]} | {(m, "metagen predictor") for m in MODELS[2:]} | \
        {(m, "metagen arrays") for m in MODELS}
    assert paths == expected and len(records) == len(expected)
    lines = run.output.splitlines()
    for r in records:
        assert any(r["model"] in line and r["path"] in line for line in lines), (r["model"], r["path"])
        assert r["rows_per_s"] > 0
        if r["path"] == "metagen arrays" and r["model"] in MODELS[:2]:
            assert r["max_abs_diff"] <= 1e-6 and r["ratio"] > 0
    assert {"gbdt", "forest"} & set(" ".join(r["detail"] for r in records if r["model"] == MODELS[2]).split())
    assert next(r for r in records if r["model"] == MODELS[3])["detail"].count("mlp") == 2
