"""Reading tables, choosing targets and kinds, and preprocessing that survives new data."""

import numpy as np
import pandas as pd
import pytest

from metagen import DataError, FitOptions, SchemaError, TargetError, fit_table, make_table, read_csv
from metagen.predictor import Predictor
from metagen.preprocess import Preprocessor, fit_preprocessor


@pytest.mark.parametrize("sep", [",", ";", "\t", "|"])
def test_delimiters_are_sniffed(tmp_path, sep):
    path = tmp_path / "t.csv"
    path.write_text(sep.join(["a", "b", "target"]) + "\n" + "\n".join(sep.join(["1.5", "x", "0"]) for _ in range(5)))
    frame = read_csv(path)
    assert list(frame.columns) == ["a", "b", "target"] and len(frame) == 5


def test_latin1_file_is_read(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("name,target\n".encode() + "café,1\nnaïve,0\n".encode("latin-1") * 5)
    assert read_csv(path)["name"].iloc[0] == "café"


def test_target_detection_and_typo_hint():
    frame = pd.DataFrame({"a": range(10), "label": [0, 1] * 5})
    table = make_table(frame)
    assert table.target == "label" and table.target_guessed and table.task == "binary"
    with pytest.raises(TargetError, match="Did you mean 'label'"):
        make_table(frame, target="lable")
    with pytest.raises(TargetError, match="--target"):
        make_table(pd.DataFrame({"a": range(10), "b": range(10)}))


def test_task_and_column_kinds():
    rng = np.random.default_rng(0)
    n = 100
    frame = pd.DataFrame({
        "num": rng.normal(size=n), "cat": rng.choice(list("abcd"), n), "flag": rng.choice(["y", "n"], n),
        "const": 1, "id": np.arange(n), "y": rng.normal(size=n),
    })
    table = make_table(frame)
    kinds = {c.name: c.kind for c in table.columns}
    assert kinds == {"num": "numeric", "cat": "categorical", "flag": "boolean", "const": "constant", "id": "id"}
    assert table.task == "regression"
    assert make_table(frame.assign(y=rng.integers(0, 5, n))).task == "multiclass"


def test_rows_without_target_are_dropped_with_a_warning():
    frame = pd.DataFrame({"a": range(12), "target": [0, 1, None] * 4})
    with pytest.warns(UserWarning, match="Dropped 4 row"):
        table = make_table(frame)
    assert table.n_rows == 8 and table.n_dropped_rows == 4


def test_bad_targets_are_explained():
    with pytest.raises(TargetError, match="one class"):
        make_table(pd.DataFrame({"a": range(10), "target": ["x"] * 10}))
    with pytest.raises(TargetError, match="constant"):
        make_table(pd.DataFrame({"a": range(10), "target": [1.5] * 10}), task="regression")
    with pytest.raises(DataError, match="no data rows"):
        make_table(pd.DataFrame({"a": [], "target": []}))


def test_preprocessing_missing_unseen_and_json_round_trip():
    train = pd.DataFrame({
        "num": [1.0, 2.0, np.nan, 4.0, 100.0] * 4,
        "few": ["a", "b", "c", "a", None] * 4,
        "many": [f"level{i % 12}" for i in range(20)],
    })
    table = make_table(train.assign(target=[0, 1] * 10))
    prep = fit_preprocessor(table.X, table.columns)
    Z = prep.transform(table.X)
    assert Z.dtype == np.float32 and np.isfinite(Z).all()
    assert Z.shape[1] == prep.n_features_out == (1 + 1) + (3 + 1) + 1  # indicators for missing values
    new = pd.DataFrame({"many": ["never seen"], "num": [np.inf], "few": ["zzz"], "extra": [1]})
    z = prep.transform(new)
    assert np.isfinite(z).all() and (z[0, 2:5] == 0).all()  # unseen category: all-zero one-hot
    again = Preprocessor.from_json(prep.to_json())
    assert np.array_equal(again.transform(table.X), Z)


def test_predictor_handles_reordered_and_extra_columns_and_names_missing_ones():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=80), "b": rng.choice(["u", "v", "w"], 80)})
    frame["target"] = (frame["a"] > 0).astype(int)
    fitted = fit_table(make_table(frame), FitOptions(time_budget=20, n_trials=1, max_steps=50))
    predictor = Predictor(fitted)
    X = frame.drop(columns="target")
    base = predictor.predict_proba(X)
    shuffled = X[["b", "a"]].assign(extra=1.0)
    assert np.array_equal(predictor.predict_proba(shuffled), base)
    with pytest.raises(SchemaError, match="Missing column.*b"):
        predictor.predict(X[["a"]])


def test_a_boolean_column_fitted_on_rows_that_show_one_level_transforms_every_row():
    frame = pd.DataFrame({"flag": ["yes"] * 30 + ["no"] * 30, "x": np.arange(60.0), "target": [0, 1] * 30})
    table = make_table(frame)
    assert [c.kind for c in table.columns if c.name == "flag"] == ["boolean"]
    fitted = fit_preprocessor(table.X.iloc[:30], table.columns)  # only "yes" among these rows
    out = fitted.transform(table.X)
    assert out.shape[0] == 60 and np.isfinite(out).all()
    assert out[0, 0] != out[45, 0]  # the flag's block: "no" is not read as "yes"
