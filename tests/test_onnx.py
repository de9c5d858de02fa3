"""ONNX export of a whole ensemble: onnxruntime must predict what ``FittedModel.predict_views`` predicts."""

import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from metagen import ConfigError, FitOptions, fit_table, make_table
from metagen.config import ACTIVATIONS, NetConfig
from metagen.model import FittedModel, Member
from metagen.model_file import save_model
from metagen.network import MLP
from metagen.onnx_export import export_onnx
from metagen.serving import NetworkPart, TreePart
from metagen_cli.export import export_command

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

FAMILIES = ("gbdt", "forest", "linear", "mlp")
N_ROWS = 200


def _frame(task: str, seed: int = 0) -> pd.DataFrame:
    """Numbers with gaps, a 3-level and a 30-level category (with gaps), a column never missing; a target
    nonlinear enough that trees earn places in the ensemble next to the linear model and the network."""
    rng = np.random.default_rng(seed)
    n, levels = N_ROWS, [f"level{i}" for i in range(30)]
    df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "few": rng.choice(["x", "y", "z"], n),
                       "many": rng.choice(levels, n), "full": rng.normal(size=n)})
    effect = dict(zip(levels, rng.normal(size=30) * 1.5))
    signal = (2.0 * (df.a > 0) * df.b + df.many.map(effect) + df.few.map({"x": 1.5, "y": -1.0, "z": 0.0})
              + 1.5 * (df.full > 0.5) + rng.normal(size=n) * 0.3)
    df.loc[rng.random(n) < 0.1, "a"] = np.nan
    df.loc[rng.random(n) < 0.1, "few"] = None
    df.loc[rng.random(n) < 0.1, "many"] = None
    if task == "binary":
        df["y"] = (signal > signal.median()).astype(int)
    elif task == "multiclass":
        df["y"] = np.digitize(signal, np.quantile(signal, [0.25, 0.5, 0.75]))
    else:
        df["y"] = 100.0 + 20.0 * signal
    return df


def _rows(df: pd.DataFrame) -> pd.DataFrame:
    """Prediction rows: seen ones, plus unseen categories and gaps where training had none."""
    rows = df.drop(columns="y").head(60).reset_index(drop=True)
    rows.loc[0:9, "few"] = "never-seen"
    rows.loc[5:19, "many"] = "also-never-seen"
    rows.loc[20:29, "full"] = np.nan
    rows.loc[30:34, ["a", "b", "few", "many", "full"]] = np.nan
    return rows


def _fit(df: pd.DataFrame, families: tuple[str, ...] = FAMILIES, n_trials: int = 7) -> FittedModel:
    options = FitOptions(n_trials=n_trials, seed=0, use_meta=False, max_steps=30, families=families)
    return fit_table(make_table(df, target="y"), options)


def _onnx_predict(fitted: FittedModel, views: dict[str, np.ndarray], path) -> np.ndarray:
    session = ort.InferenceSession(str(export_onnx(fitted, path)), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: views[i.name] for i in session.get_inputs()})[0]


def _assert_matches(fitted: FittedModel, views: dict[str, np.ndarray], path) -> float:
    got, expected = _onnx_predict(fitted, views, path), fitted.predict_views(views)
    assert got.shape == expected.shape
    if fitted.task == "regression":
        assert np.allclose(got, expected, rtol=1e-5, atol=0), np.max(np.abs(got / expected - 1))
        return float(np.max(np.abs(got / expected - 1)))
    assert np.allclose(got, expected, rtol=0, atol=1e-5), np.max(np.abs(got - expected))
    return float(np.max(np.abs(got - expected)))


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[pd.DataFrame, FittedModel]]:
    return {}


def _model(models: dict, task: str) -> tuple[pd.DataFrame, FittedModel]:
    if task not in models:
        df = _frame(task)
        models[task] = (df, _fit(df))
    return models[task]


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_ensemble_matches_reference(models, task, tmp_path):
    df, fitted = _model(models, task)
    assert fitted.task == task and (task != "multiclass" or fitted.n_out >= 4)
    views = fitted.transform(_rows(df))
    families = {m.family for m in fitted.members}
    assert {"gbdt", "forest"} <= families, families
    assert np.isnan(views["ordinal"]).any()  # gaps reach the trees as NaN
    _assert_matches(fitted, views, tmp_path / "all.onnx")
    # Each member alone too: a member with a small weight could hide its error in the blend.
    for i, member in enumerate(fitted.members):
        _assert_matches(replace(fitted, members=[replace(member, weight=1.0)]), views, tmp_path / f"m{i}.onnx")
    # A family the ensemble left out is fitted alone, so every part kind is checked on every task.
    checked = {m.family for m in fitted.members}
    for family in FAMILIES:
        if family not in checked:
            alone = _fit(df, (family,), n_trials=2)
            _assert_matches(alone, alone.transform(_rows(df)), tmp_path / f"{family}.onnx")
            checked |= {m.family for m in alone.members}
    assert checked >= set(FAMILIES)


def test_categorical_splits_are_exercised(models):
    """The tables are built so that boosting splits on category sets: BRANCH_MEMBER runs on fitted models too."""
    _, fitted = _model(models, "multiclass")
    trees = [p for m in fitted.members if m.family == "gbdt" for p in m.parts]
    if not trees:
        trees = [p for m in _fit(_frame("multiclass"), ("gbdt",), n_trials=2).members for p in m.parts]
    assert any((p.category_set >= 0).any() for p in trees)


def _tiny_trees(link: str, baseline: list[float], width: int) -> TreePart:
    """Hand-made trees: a category split (missing left), a numeric split (missing right), a one-leaf tree."""
    bits = np.zeros((2, 8), np.uint32)
    bits[0, 0] = 0b101  # codes 0 and 2 go left
    bits[1, 0] = 0b10  # code 1 goes left
    known = np.full((width, 8), 0xFFFFFFFF, np.uint32)
    known[0] = 0
    known[0, 0] = 0b111  # column 0 saw codes 0, 1, 2; the others are numeric
    value = np.zeros((10, 2))
    value[[1, 2, 4, 5, 6, 8, 9], :] = [[1, 0], [0, 2], [0.5, 0], [0, -1], [3, 0], [0, 7], [-2, 1]]
    return TreePart(
        feature=np.array([0, 0, 0, 1, 0, 0, 0, 0, 0, 0], np.int32),
        threshold=np.array([np.inf, np.inf, np.inf, 0.25, np.inf, np.inf, np.inf, np.inf, np.inf, np.inf], np.float32),
        left=np.array([1, 1, 2, 4, 4, 5, 6, 8, 8, 9], np.int32),
        right=np.array([2, 1, 2, 5, 4, 5, 6, 9, 8, 9], np.int32),
        missing_left=np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0], bool),
        category_set=np.array([0, -1, -1, -1, -1, -1, -1, 1, -1, -1], np.int32),
        bitsets=bits, known=known, value=value, roots=np.array([0, 3, 6, 7], np.int32),
        baseline=np.asarray(baseline, np.float64), scale=1.0, link=link, depth=1, regression=False,
    )


@pytest.mark.parametrize(("link", "baseline"), [("softmax", [0.1, -np.inf]), ("softmax", [0.0, 0.3]),
                                                ("identity", [5.0, 5.0])])
def test_tree_routing_edge_cases(models, tmp_path, link, baseline):
    """Unseen, missing, out-of-range and fractional codes, NaN numbers, one-leaf trees, a class never seen."""
    _, fitted = _model(models, "binary")
    width = fitted.views["ordinal"].n_features_out
    part = _tiny_trees(link, baseline, width)
    if link == "identity":
        part.value = np.abs(part.value)
    codes = np.array([0, 1, 2, 3, 7, 255, 256, -1, 1.5, 2.9, np.nan, 1e30, -1e30])
    numbers = np.array([0.25, np.nextafter(np.float32(0.25), np.float32(1)), -3, np.nan, np.inf])
    grid = np.array([(c, x) for c in codes for x in numbers], np.float32)
    X = np.zeros((len(grid), width), np.float32)
    X[:, :2] = grid
    model = replace(fitted, members=[Member("gbdt", {}, "ordinal", [part])])
    _assert_matches(model, {"ordinal": X}, tmp_path / "tiny.onnx")
    # The ONNX spec's own reference evaluator reads the graph the same way as onnxruntime.
    from onnx.reference import ReferenceEvaluator

    got = ReferenceEvaluator(str(tmp_path / "tiny.onnx")).run(None, {"ordinal": X})[0]
    assert np.allclose(got, model.predict_views({"ordinal": X}), rtol=0, atol=1e-12)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_network_activations(models, tmp_path, activation):
    """Every activation, with and without layer norm, residual blocks and the input scale."""
    df, fitted = _model(models, "multiclass")
    views = fitted.transform(_rows(df))
    width = fitted.views["quantile"].n_features_out
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    for norm, residual, scale in (("none", False, True), ("layer", True, False)):
        config = NetConfig(depth=3, width=16, activation=activation, norm=norm, residual=residual,
                           scale_layer=scale)
        net = MLP(width, fitted.n_out, config)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.3)  # away from the initial ones and zeros
        part = NetworkPart.from_module(net, config, regression=False)
        model = replace(fitted, members=[Member("mlp", {}, "quantile", [part])])
        _assert_matches(model, views, tmp_path / f"{activation}.onnx")


def test_missing_onnx_is_a_config_error(models, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ConfigError, match="metagen\\[onnx\\]"):
        export_onnx(_model(models, "binary")[1], tmp_path / "m.onnx")


def test_export_command(models, tmp_path):
    df, fitted = _model(models, "binary")
    model_file = save_model(fitted, tmp_path / "m.metagen")
    app = typer.Typer()
    app.command("export")(export_command)
    app.command("other")(lambda: None)  # two commands, so "export" is a subcommand as in the real app
    runner = CliRunner()
    target = tmp_path / "out" / "m.onnx"
    result = runner.invoke(app, ["export", str(model_file), "--onnx", str(target)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {target} (inputs: ") and "output probabilities[N,2])" in result.output
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    views = fitted.transform(_rows(df))
    got = session.run(None, {i.name: views[i.name] for i in session.get_inputs()})[0]
    assert np.allclose(got, fitted.predict_views(views), rtol=0, atol=1e-5)

    missing = runner.invoke(app, ["export", str(tmp_path / "nope.metagen"), "--onnx", str(target)])
    assert missing.exit_code == 1 and "error:" in missing.output
    no_option = runner.invoke(app, ["export", str(model_file)])
    assert no_option.exit_code == 2
