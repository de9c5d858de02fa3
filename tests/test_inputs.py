"""Input as people have it (CSV, TSV, Parquet, Excel, standard input), and missing pieces said in one line."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import EXAMPLES
from metagen_cli.app import app
from typer.testing import CliRunner

from metagen.bench.peers import METHODS, available
from metagen.model_file import read_spec

FAST = ["--n-trials", "3", "--families", "linear,forest", "--time-budget", "5", "--seed", "0", "--quiet"]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """Numbers, a text column and missing values: what each format has to carry alike."""
    data = pd.read_csv(EXAMPLES / "wine.csv").head(150)
    data.insert(0, "region", np.where(data["alcohol"] > 13, "north", "south"))
    data.loc[::7, "magnesium"] = np.nan
    return data


def _fit(data: Path, model: Path, *extra: str, stdin: str | None = None) -> None:
    result = CliRunner().invoke(app, ["fit", str(data), "--target", "class", "-o", str(model), *FAST, *extra],
                                input=stdin)
    assert result.exit_code == 0, result.output


def test_parquet_excel_tsv_and_stdin_give_the_model_csv_gives(tmp_path: Path, frame: pd.DataFrame) -> None:
    csv = tmp_path / "t.csv"
    frame.to_csv(csv, index=False)
    frame.to_csv(tmp_path / "t.tsv", index=False, sep="\t")
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    frame.to_excel(tmp_path / "t.xlsx", index=False)
    _fit(csv, tmp_path / "csv.metagen")
    reference = read_spec(tmp_path / "csv.metagen")[0]
    for name in ("t.tsv", "t.parquet", "t.xlsx", "-"):
        model = tmp_path / f"{name.replace('.', '_')}.metagen"
        _fit(tmp_path / name if name != "-" else Path("-"), model, stdin=csv.read_text() if name == "-" else None)
        spec = read_spec(model)[0]
        assert spec["columns"] == reference["columns"], name
        assert [(m["family"], m["config"], m["weight"]) for m in spec["members"]] == \
            [(m["family"], m["config"], m["weight"]) for m in reference["members"]], name
        assert spec["metrics"] == pytest.approx(reference["metrics"], rel=1e-9), name


def test_predict_reads_and_writes_by_extension(tmp_path: Path, frame: pd.DataFrame) -> None:
    csv = tmp_path / "t.csv"
    frame.to_csv(csv, index=False)
    frame.drop(columns=["class"]).to_parquet(tmp_path / "x.parquet", index=False)
    model = tmp_path / "m.metagen"
    _fit(csv, model)
    runner = CliRunner()
    assert runner.invoke(app, ["predict", str(model), str(csv), "-o", str(tmp_path / "p.csv"), "--proba"]).exit_code == 0
    result = runner.invoke(app, ["predict", str(model), str(tmp_path / "x.parquet"), "-o", str(tmp_path / "p.parquet"),
                                 "--proba"])
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "p.parquet"), pd.read_csv(tmp_path / "p.csv"),
                                  check_dtype=False, rtol=1e-12)
    piped = runner.invoke(app, ["predict", str(model), "-", "--proba"], input=csv.read_text())
    assert piped.exit_code == 0, piped.output
    assert piped.stdout == (tmp_path / "p.csv").read_text()


@pytest.mark.parametrize(("suffix", "module", "extra"), [(".parquet", "pyarrow", "parquet"),
                                                         (".xlsx", "openpyxl", "excel")])
def test_a_missing_reader_names_the_extra(tmp_path: Path, frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch,
                                          suffix: str, module: str, extra: str) -> None:
    data = tmp_path / f"t{suffix}"
    frame.to_parquet(data) if suffix == ".parquet" else frame.to_excel(data, index=False)
    monkeypatch.setitem(sys.modules, module, None)
    result = CliRunner().invoke(app, ["fit", str(data), "--target", "class", "-o", str(tmp_path / "m.metagen"), *FAST])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"needs the {module} package" in lines[0] and f"pip install 'metagen[{extra}]'" in lines[0]


def test_a_missing_peer_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lightgbm", None)
    _, absent = available([m for m in METHODS if m.name == "lightgbm"])
    assert absent == {"lightgbm": "lightgbm is not installed; pip install 'metagen[peers]'"}


def test_every_refused_column_is_named_with_its_reason(tmp_path: Path) -> None:
    n = 40
    data = pd.DataFrame({"k": [7] * n, "empty": [np.nan] * n, "row": range(n), "name": [f"p{i}" for i in range(n)],
                         "user_id": np.random.default_rng(0).permutation(n) * 3, "y": [0, 1] * (n // 2)})
    path = tmp_path / "ids.csv"
    data.to_csv(path, index=False)
    result = CliRunner().invoke(app, ["fit", str(path), "--target", "y", *FAST])
    assert result.exit_code == 1
    text = result.output
    for expected in ("'k' is constant (7", "'empty' is empty in every row", "'row' is a running number",
                     "'name' has a different text in every row",
                     "'user_id' holds unique integers and is named like an identifier", "kept once renamed"):
        assert expected in text, text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1


def test_bench_peers_without_matplotlib_says_the_extra_before_running(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = CliRunner().invoke(app, ["bench", "peers", "--suite", "synthetic", "--methods", "linear",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == ("error: Plotting needs the matplotlib package, which is not "
                                                      "installed. Install it with: pip install 'metagen[plot]'")
    assert not (tmp_path / "runs.csv").exists()
