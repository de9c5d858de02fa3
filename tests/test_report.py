"""The HTML report, as a person opens it: rendered in headless Chromium, without console errors, every plot drawn."""

from __future__ import annotations

import json
import re
import shutil
import sys
import zipfile
from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import EXAMPLES
from metagen_cli.app import app
from typer.testing import CliRunner

from metagen.model_file import read_spec

FAST = ["--n-trials", "4", "--families", "linear,forest", "--time-budget", "5", "--quiet"]
# Drawn elements an SVG plot has at least (axes, ticks, labels and marks), and its least size in pixels.
MIN_SVG_ELEMENTS = 15
MIN_SVG_PIXELS = 150


def chromium() -> tuple[str, str] | None:
    """Debian's chromium and its driver (``apt-get install chromium chromium-driver``), if installed."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def render(page: Path, screenshot: Path | None = None) -> dict:
    """Open ``page`` in headless Chromium: its console errors, and each plot's size and count of drawn elements."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    browser, driver_path = chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        driver.get(page.resolve().as_uri())
        plots = [(svg.size["width"], svg.size["height"],
                  driver.execute_script("return arguments[0].querySelectorAll('path,use,rect,line,text').length", svg))
                 for svg in driver.find_elements(By.CSS_SELECTOR, "figure.plot svg")]
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        if screenshot is not None:  # the whole page
            driver.set_window_size(1200, driver.execute_script("return document.body.scrollHeight") + 100)
            driver.save_screenshot(str(screenshot))
        return {"errors": errors, "plots": plots, "title": driver.title}
    finally:
        driver.quit()


def check_page(page: Path, min_plots: int) -> str:
    """The page loads without console errors and every plot in it is drawn; returns its HTML."""
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|url\((?!#)|@import""", text), "the page must need no network"
    shown = render(page)
    assert shown["errors"] == [], shown["errors"]
    assert shown["title"].startswith("metagen report")
    assert len(shown["plots"]) == text.count('<figure class="plot">') >= min_plots, shown["plots"]
    for width, height, elements in shown["plots"]:
        assert width >= MIN_SVG_PIXELS and height >= MIN_SVG_PIXELS and elements >= MIN_SVG_ELEMENTS, shown["plots"]
    return text


needs_chromium = pytest.mark.skipif(chromium() is None, reason="chromium and chromedriver not found "
                                    "(apt-get install chromium chromium-driver)")


def _fit(tmp_path: Path, name: str, frame: pd.DataFrame, target: str, *extra: str) -> tuple[Path, Path]:
    data = tmp_path / f"{name}.csv"
    frame.to_csv(data, index=False)
    model, page = tmp_path / f"{name}.metagen", tmp_path / f"{name}.html"
    result = CliRunner().invoke(app, ["fit", str(data), "--target", target, "-o", str(model), "--report", str(page),
                                      *FAST, *extra])
    assert result.exit_code == 0, result.output
    return model, page


CASES = {
    "binary": ("breast_cancer.csv", "diagnosis", ["--test-size", "0.25"], ("confusion matrix", "ROC")),
    "multiclass": ("wine.csv", "class", [], ("confusion matrix", "one class against the rest")),
    "regression": ("diabetes.csv", "progression", [], ("predicted against actual", "residuals")),
}


@needs_chromium
@pytest.mark.parametrize("kind", list(CASES))
def test_fit_report_renders_with_every_plot(tmp_path: Path, kind: str) -> None:
    file, target, extra, titles = CASES[kind]
    frame = pd.read_csv(EXAMPLES / file).sample(frac=1, random_state=0).head(200)
    _, page = _fit(tmp_path, kind, frame, target, *extra)
    # target distribution, search over time, two metric plots, permutation importance (+ parameter importances)
    text = check_page(page, min_plots=5)
    for title in ("Data", "Leaderboard by family", "Search over time", "Permutation feature importance", *titles):
        assert title in text
    assert ("Held-back metrics" in text) == (kind == "binary")


def test_report_reads_the_study_from_a_journal_file(tmp_path: Path) -> None:
    frame = pd.read_csv(EXAMPLES / "wine.csv").head(150)
    log = tmp_path / "study.log"
    model, _ = _fit(tmp_path, "journal", frame, "class", "--storage", f"journal:///{log}")
    page = tmp_path / "again.html"
    result = CliRunner().invoke(app, ["report", str(model), "-o", str(page), "--storage", f"journal:///{log}"])
    assert result.exit_code == 0, result.output
    with_study = page.read_text()
    assert "needs the fit" not in with_study
    missing = tmp_path / "missing.log"
    result = CliRunner().invoke(app, ["report", str(model), "-o", str(page), "--storage", f"journal:///{missing}"])
    assert result.exit_code == 0, result.output
    assert f"the journal {missing} is not there" in page.read_text() and not missing.exists()
    assert page.read_text().count("<svg") < with_study.count("<svg")  # the search's plots need the study


@needs_chromium
def test_report_from_the_model_file_alone(tmp_path: Path) -> None:
    frame = pd.read_csv(EXAMPLES / "wine.csv").head(150)
    model, _ = _fit(tmp_path, "alone", frame, "class")
    study = optuna.load_study(study_name=read_spec(model)[0]["provenance"]["study_name"],
                              storage=f"sqlite:///{model.with_suffix('.optuna.db')}")
    for trial in study.get_trials(states=[optuna.trial.TrialState.COMPLETE]):  # what optuna-dashboard shows
        assert {"family", "config", "seconds"} <= set(trial.user_attrs)
        assert trial.intermediate_values or trial.user_attrs["family"] == "forest"  # forests score out-of-bag
    del study
    model.with_suffix(".optuna.db").unlink()
    page = tmp_path / "later.html"
    result = CliRunner().invoke(app, ["report", str(model), "-o", str(page)])
    assert result.exit_code == 0, result.output
    # target distribution of the scored rows, confusion matrix and ROC curve, all from the model file
    text = check_page(page, min_plots=3)
    assert "needs the fit&#x27;s Optuna study" in text and str(model.with_suffix(".optuna.db")) in text
    assert "pass --data FILE" in text  # the permutation importance says what it needs
    assert "Proposer: predicted against obtained" in text

    # Where the proposer ran, the model file lists its proposals with their predicted scores.
    spec, weights = read_spec(model)
    spec["provenance"]["proposals"] = [{"family": r["family"], "config": r["config"],
                                        "predicted_score": r["score"] - 0.01} for r in spec["leaderboard"]]
    proposed = tmp_path / "proposed.metagen"
    with zipfile.ZipFile(proposed, "w") as zf:
        zf.writestr("spec.json", json.dumps(spec))
        zf.writestr("weights.safetensors", weights)
    result = CliRunner().invoke(app, ["report", str(proposed), "-o", str(tmp_path / "proposed.html")])
    assert result.exit_code == 0, result.output
    text = check_page(tmp_path / "proposed.html", min_plots=4)
    assert f"{len(spec['leaderboard'])} of {len(spec['leaderboard'])} proposals" in text

    with_data = tmp_path / "with-data.html"
    result = CliRunner().invoke(app, ["report", str(model), "-o", str(with_data), "--data", str(tmp_path / "alone.csv")])
    assert result.exit_code == 0, result.output
    assert "permutation importance" in check_page(with_data, min_plots=4)


def test_missing_matplotlib_is_one_line_before_the_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = CliRunner().invoke(app, ["fit", str(EXAMPLES / "wine.csv"), "-o", str(tmp_path / "m.metagen"),
                                      "--report", str(tmp_path / "r.html"), *FAST])
    assert result.exit_code == 1
    assert "pip install 'metagen[plot]'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m.metagen").exists()


def write_screenshot(path: Path, work: Path) -> None:
    """docs/report.png, run by hand from the repository root: the README's example fit, its report in Chromium."""
    page = work / "report.html"
    result = CliRunner().invoke(app, ["fit", "examples/breast_cancer.csv", "--target", "diagnosis", "--test-size", "0.2",
                                      "--families", "gbdt,forest,linear", "--n-trials", "16", "--quiet",
                                      "-o", str(work / "breast_cancer.metagen"), "--report", str(page)])
    assert result.exit_code == 0, result.output
    render(page, screenshot=path)
