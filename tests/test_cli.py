"""The real `metagen` command, run in a subprocess as a user would."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

FAST = ["--time-budget", "8", "--max-steps", "120", "--n-trials", "3"]


def metagen(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "metagen_cli.app", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.mark.parametrize(
    ("name", "target", "task", "metric"),
    [("breast_cancer", "diagnosis", "binary", "roc_auc"),
     ("wine", None, "multiclass", "roc_auc"),
     ("diabetes", "progression", "regression", "r2")],
)
def test_fit_predict_info_evaluate(tmp_path, examples, name, target, task, metric):
    data = examples / f"{name}.csv"
    model = tmp_path / "m.metagen"
    args = ["fit", data, "-o", model, "--onnx", tmp_path / "m.onnx", *FAST] + (["--target", target] if target else [])
    run = metagen(*args, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert f": {task}" in run.stdout and f"metric {metric}" in run.stdout
    assert "score on out-of-fold predictions" in run.stdout and model.exists()
    if target is None:
        assert "taken: last column" in run.stdout
    assert (tmp_path / "m.optuna.db").exists()  # the study lives in SQLite by default

    preds = tmp_path / "p.csv"
    run = metagen("predict", model, data, "--output", preds, *(["--proba"] if task != "regression" else []))
    assert run.returncode == 0, run.stderr
    frame = pd.read_csv(preds)
    assert len(frame) == len(pd.read_csv(data))
    if task != "regression":
        proba = frame.filter(like="proba_")
        assert proba.shape[1] >= 2 and ((proba.sum(axis=1) - 1).abs() < 1e-6).all()

    run = metagen("predict", model, data)  # to stdout
    assert run.returncode == 0 and run.stdout.splitlines()[0] == frame.columns[0]

    info = metagen("info", model, "--json")
    spec = json.loads(info.stdout)
    assert spec["task"] == task and spec["columns"] and spec["members"][0]["family"] in ("linear", "gbdt", "forest", "mlp")
    assert abs(sum(m["weight"] for m in spec["members"]) - 1) < 1e-9
    assert metric in spec["metrics"] and spec["versions"]["torch"]
    assert metagen("info", model).returncode == 0
    assert (tmp_path / "m.onnx").stat().st_size > 0
    exported = metagen("export", model, "--onnx", tmp_path / "again.onnx")
    assert exported.returncode == 0 and "wrote" in exported.stdout and (tmp_path / "again.onnx").exists()

    ev = metagen("evaluate", model, data, "--json")
    assert ev.returncode == 0, ev.stderr
    scores = json.loads(ev.stdout)
    assert scores[metric] > (0.9 if task != "regression" else 0.3)


def test_predictions_identical_in_a_fresh_process(tmp_path, examples):
    model = tmp_path / "wine.metagen"
    assert metagen("fit", examples / "wine.csv", "-o", model, *FAST).returncode == 0
    code = (
        "import sys, metagen, pandas as pd; p = metagen.load(sys.argv[1]); "
        "X = pd.read_csv(sys.argv[2]).drop(columns='class'); "
        "pd.DataFrame(p.predict_proba(X)).to_csv(sys.stdout, index=False, float_format='%.17g')"
    )
    runs = [subprocess.run([sys.executable, "-c", code, model, examples / "wine.csv"], capture_output=True,
                           text=True, check=True).stdout for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0].splitlines()) == 179


def test_user_errors_are_one_line_with_exit_code_1(tmp_path, examples):
    run = metagen("fit", examples / "wine.csv", "--target", "klass", *FAST)
    assert run.returncode == 1
    assert "Did you mean 'class'" in run.stderr and "Traceback" not in run.stderr
    run = metagen("fit", tmp_path / "missing.csv")
    assert run.returncode == 1 and "File not found" in run.stderr
    (tmp_path / "notes.txt").write_text("hello")
    run = metagen("predict", tmp_path / "notes.txt", examples / "wine.csv")
    assert run.returncode == 1 and "not a metagen model file" in run.stderr
    run = metagen("fit")  # usage error
    assert run.returncode == 2


def test_help_lists_the_commands():
    run = metagen("--help")
    assert run.returncode == 0
    for command in ("fit", "predict", "info", "evaluate", "export"):
        assert command in run.stdout
