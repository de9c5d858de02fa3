"""Bad input, through the CLI and the Python API: a one-line error (exit 1) that says what to do, or handled.

The CLI cases run the real typer app in-process (same argument parsing, error handling and exit
codes as the `metagen` command) so that two dozen cases do not pay the interpreter start each;
tests/test_cli.py and the big-table case below run it as a separate process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from metagen import FitOptions, MetaGenError, SchemaError, fit_table, read_table
from metagen.predictor import Predictor, load
from metagen_cli.app import app

QUICK = FitOptions(time_budget=30, n_trials=1, max_steps=30)
QUICK_ARGS = ["--n-trials", "1", "--max-steps", "30", "-q"]
LATIN = ["caf\u00e9", "na\u00efve"]


def _rows(n: int, line: Callable[[int], str], header: str = "x,c,y") -> str:
    return header + "\n" + "\n".join(line(i) for i in range(n)) + "\n"


def _basic(n: int = 60) -> str:
    return _rows(n, lambda i: f"{i * 0.37 % 5:.2f},{'abc'[i % 3]},{i % 2}")


# name -> (file content, target, expected): expected "ok" or a regex the one-line error must match.
CASES: dict[str, tuple[str | bytes, str, str]] = {
    "empty file": ("", "y", "is empty.*header row"),
    "header only": ("x,c,y\n", "y", "no data rows.*Add rows"),
    "one row": ("x,c,y\n1,a,0\n", "y", "1 sample.*at least 5 rows"),
    "fewer rows than classes": (_rows(8, lambda i: f"{i},k{i}", "x,y"), "y", "8 rows for 8 classes.*two rows per class"),
    "misspelt target": (_basic(), "Y2", "'Y2' is not in the table.*Did you mean 'y'"),
    "missing target": (_basic(), "price", "'price' is not in the table.*Columns are: x, c, y"),
    "constant target": (_rows(40, lambda i: f"{i},1.5", "x,y"), "y", "constant.*cannot learn"),
    "one class": (_rows(40, lambda i: f"{i},a", "x,y"), "y", "one class only.*at least two classes"),
    "a class with one row": (_rows(40, lambda i: f"{i * 0.1},{'ab'[i % 2]}", "x,y") + "9,c\n", "y", "ok"),
    "target all missing": (_rows(40, lambda i: f"{i},", "x,y"), "y", "empty in every row.*another target"),
    "target partly missing": (_rows(40, lambda i: f"{i * 0.1},{'' if i % 5 == 0 else i % 2}", "x,y"), "y", "ok"),
    "more than 200 classes": (_rows(600, lambda i: f"{i},c{i % 250}", "x,y"), "y", "250 classes.*--task regression"),
    "all-missing column": (_rows(40, lambda i: f"{i * 0.1},,{i % 2}", "x,m,y"), "y", "ok"),
    "constant column": (_rows(40, lambda i: f"{i * 0.1},7,{i % 2}", "x,k,y"), "y", "ok"),
    "id-like column": (_rows(40, lambda i: f"{i},{i * 0.37 % 5:.2f},{i % 2}", "id,x,y"), "y", "ok"),
    "only constant and id columns": (_rows(40, lambda i: f"{i},7,{i % 2}", "id,k,y"), "y", "nothing to learn"),
    "duplicate column names": (_rows(40, lambda i: f"{i},{i},{i % 2}", "x,x,y"), "y", "Duplicate column names: x.*Rename"),
    "mixed types in a column": (_rows(40, lambda i: f"{i if i % 7 else 'abc'},{i % 2}", "x,y"), "y", "ok"),
    "question marks for missing": (_rows(40, lambda i: f"{i * 0.1 if i % 3 else '?'},{i % 2}", "x,y"), "y", "ok"),
    "thousands separators": (_rows(40, lambda i: f'"{1000 + i * 37:,}",{i % 2}', "x,y"), "y", "ok"),
    "decimal commas": (_rows(40, lambda i: f"{i * 0.37:.2f};{i % 2}".replace(".", ","), "x;y"), "y", "ok"),
    "inf and huge values": (
        _rows(40, lambda i: f"{'inf' if i % 9 == 0 else i * 0.1},{1e308 if i % 4 == 0 else -1e300 * i},{i % 2}",
              "x,z,y"), "y", "ok"),
    "non-UTF-8 bytes": (_rows(40, lambda i: f"{i * 0.1},{LATIN[i % 2]},{i % 2}").encode("latin-1"),
                        "y", "ok"),
    "binary file": (bytes(np.random.default_rng(0).integers(0, 256, 4000).astype(np.uint8)), "y", "binary file"),
    "wrong delimiter": (_rows(40, lambda i: f"{i} {i % 3} {i % 2}", "x y z"), "z", "one column only.*delimiter"),
    "ragged rows": (_rows(40, lambda i: f"{i},a,{i % 2}" + (",9,9" if i == 20 else "")), "y",
                    "not a regular table.*line 22.*same number of fields"),
    "short rows": (_rows(40, lambda i: f"{i * 0.1},a,{i % 2}" if i != 20 else "1.5"), "y", "ok"),
}


def _write(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "data.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def cli(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a bug: let pytest show the traceback
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_api(tmp_path, name):
    content, target, expected = CASES[name]
    path = _write(tmp_path, content)
    if expected != "ok":
        with pytest.raises(MetaGenError, match=expected):
            fit_table(read_table(path, target=target), QUICK)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitted = fit_table(read_table(path, target=target), QUICK)
    assert np.isfinite(fitted.valid_score)
    if name == "target partly missing":
        assert any("Dropped 8 row(s)" in str(w.message) for w in caught)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_cli(tmp_path, name):
    content, target, expected = CASES[name]
    path = _write(tmp_path, content)
    code, stdout, stderr = cli("fit", path, "--target", target, "-o", tmp_path / "m.metagen", *QUICK_ARGS)
    if expected != "ok":
        assert code == 1, stdout + stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), stderr
        assert re.search(expected, lines[0]), lines[0]
        return
    assert code == 0, stdout + stderr
    assert (tmp_path / "m.metagen").exists()
    if name == "target partly missing":
        assert "warning: Dropped 8 row(s) whose target 'y' is missing." in stderr
    if name in ("all-missing column", "constant column", "id-like column"):
        assert "ignoring constant or id-like column(s)" in stdout


def test_kinds_after_reading_written_numbers(tmp_path):
    for name, kinds in [("thousands separators", {"x": "numeric"}), ("decimal commas", {"x": "numeric"}),
                        ("question marks for missing", {"x": "numeric"}), ("inf and huge values", {"x": "numeric"})]:
        table = read_table(_write(tmp_path, CASES[name][0]), target="y")
        assert {c.name: c.kind for c in table.columns if c.name in kinds} == kinds, name
    table = read_table(_write(tmp_path, CASES["thousands separators"][0]), target="y")
    assert table.X["x"].iloc[1] == 1037.0


def test_a_thousand_columns(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(200, 1000)).round(3), columns=[f"c{i}" for i in range(1000)])
    frame["y"] = (frame["c0"] > 0).astype(int)
    path = tmp_path / "wide.csv"
    frame.to_csv(path, index=False)
    code, stdout, stderr = cli("fit", path, "-o", tmp_path / "w.metagen", *QUICK_ARGS)
    assert code == 0, stderr
    assert "1000 feature columns" in stdout
    assert load(tmp_path / "w.metagen").predict(frame.head(3)).shape == (3,)


# Peak memory allowed for `metagen fit` on a 1,000,000-row, 6-column CSV (measured: see docs/design.md).
MILLION_ROWS_MAX_RSS_MB = 1500


def test_a_million_rows_in_bounded_memory_and_time(tmp_path):
    rng = np.random.default_rng(0)
    n = 1_000_000
    frame = pd.DataFrame(rng.normal(size=(n, 5)).round(3), columns=[f"f{i}" for i in range(5)])
    frame["c"] = rng.choice(list("abcdefgh"), n)
    frame["y"] = (frame["f0"] + (frame["c"] < "d") > 0.5).astype(int)
    path = tmp_path / "big.csv"
    frame.to_csv(path, index=False)
    del frame
    budget = 20
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    with open(tmp_path / "out.txt", "w+") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "metagen_cli.app", "fit", path, "-o", tmp_path / "big.metagen",
             "--time-budget", str(budget), "--max-steps", "100", "-q"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    assert proc.returncode == 0, text
    assert "read 1000000 rows" in text
    peak_mb = usage.ru_maxrss / 1024
    print(f"1M rows: peak RSS {peak_mb:.0f} MB")
    assert peak_mb < MILLION_ROWS_MAX_RSS_MB
    provenance = load(tmp_path / "big.metagen").fitted.provenance
    assert provenance["validation"] == "holdout" and provenance["n_scored_rows"] == 10_000  # holdout rows are capped


# --- predict time -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 120
    frame = pd.DataFrame({
        "num": rng.normal(size=n), "cat": rng.choice(["red", "green", "blue"], n),
        "flag": rng.integers(0, 2, n), "code": rng.choice(["7", "8", "9", "x"], n),
    })
    frame["target"] = (frame["num"] + (frame["cat"] == "red") > 0.3).astype(int)
    folder = tmp_path_factory.mktemp("predict")
    path = folder / "m.metagen"
    Predictor(fit_table(read_table(_frame_csv(frame, folder / "train.csv")), QUICK)).save(path)
    return path, frame.drop(columns="target"), folder


def _frame_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def test_predict_missing_columns_are_named(model):
    path, X, folder = model
    with pytest.raises(SchemaError, match="Missing column.*cat, flag"):
        load(path).predict(X[["num", "code"]])
    code, _, stderr = cli("predict", path, _frame_csv(X[["num", "code"]], folder / "missing.csv"))
    assert code == 1 and "Missing column(s) the model was fitted on: cat, flag." in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_predict_extra_reordered_and_retyped_columns_give_the_same_predictions(model):
    path, X, folder = model
    predictor = load(path)
    base = predictor.predict_proba(X)
    variants = {
        "extra and reordered": X[list(reversed(X.columns))].assign(extra="zzz"),
        "numbers as text": X.assign(num=X["num"].map(repr)),
        "integers as floats": X.assign(flag=X["flag"].astype(float)),
        "codes as numbers": X.assign(code=X["code"].map(lambda v: 9 if v == "9" else v)),
    }
    for name, frame in variants.items():
        assert np.allclose(predictor.predict_proba(frame), base, atol=1e-6), name
    with_gap = X.assign(flag=X["flag"].astype(float).where(X.index > 0))  # a gap makes pandas read floats
    assert np.allclose(predictor.predict_proba(with_gap)[1:], base[1:], atol=1e-6)
    code, stdout, stderr = cli("predict", path, _frame_csv(variants["extra and reordered"], folder / "extra.csv"))
    assert code == 0, stderr
    assert stdout.splitlines()[0] == "target" and len(stdout.splitlines()) == len(X) + 1


def test_predict_unseen_categories_and_empty_input(model):
    path, X, folder = model
    predictor = load(path)
    unseen = X.head(5).assign(cat="purple", code="never")
    proba = predictor.predict_proba(unseen)
    assert np.isfinite(proba).all() and np.allclose(proba.sum(axis=1), 1)
    with pytest.raises(MetaGenError, match="No rows to predict"):
        predictor.predict(X.head(0))
    code, _, stderr = cli("predict", path, _frame_csv(X.head(0), folder / "empty.csv"))
    assert code == 1 and "No rows to predict" in stderr
    (folder / "blank.csv").write_text("")
    code, _, stderr = cli("predict", path, folder / "blank.csv")
    assert code == 1 and "is empty" in stderr
