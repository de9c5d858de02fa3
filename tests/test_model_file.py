"""Model files load without pickle, and every kind of bad file gets a clear error."""

import hashlib
import json
import pickle
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

import metagen
from metagen import FitOptions, ModelFileError, fit_table, make_table
from metagen.model_file import SPEC, WEIGHTS, save_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60)})
    frame["target"] = (frame["a"] + frame["b"] > 0).astype(int)
    fitted = fit_table(make_table(frame), FitOptions(time_budget=20, n_trials=1, max_steps=30, families=("mlp",)))
    path = tmp_path_factory.mktemp("m") / "model.metagen"
    save_model(fitted, path)
    return path, frame.drop(columns="target")


def _rewrite(src, dst, *, spec=None, weights=None, extra=None):
    with zipfile.ZipFile(src) as zf:
        members = {SPEC: zf.read(SPEC), WEIGHTS: zf.read(WEIGHTS)}
    if spec is not None:
        members[SPEC] = json.dumps(spec(json.loads(members[SPEC]))).encode()
    if weights is not None:
        members[WEIGHTS] = weights
    members.update(extra or {})
    with zipfile.ZipFile(dst, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return dst


def test_round_trip(saved):
    path, X = saved
    a, b = metagen.load(path), metagen.load(path)
    assert np.array_equal(a.predict_proba(X), b.predict_proba(X))
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == [SPEC, WEIGHTS]


class Boom:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize(
    "case", ["pickle", "traversal", "truncated", "newer", "shape", "weights_shape", "checksum", "not_zip"]
)
def test_bad_files_get_clear_errors(saved, tmp_path, case, capsys):
    path, _ = saved
    bad = tmp_path / "bad.metagen"
    if case == "pickle":
        _rewrite(path, bad, extra={"data.pkl": pickle.dumps(Boom())})
        match = "unexpected: data.pkl"
    elif case == "traversal":
        _rewrite(path, bad, extra={"../../evil.txt": b"x"})
        match = "unexpected"
    elif case == "truncated":
        bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        match = "truncated"
    elif case == "newer":
        _rewrite(path, bad, spec=lambda s: {**s, "format_version": 99})
        match = "version 99"
    elif case == "shape":
        def widen(s):
            s["members"][0]["parts"][0]["meta"]["config"]["width"] *= 2
            return s
        _rewrite(path, bad, spec=widen)
        match = "do not match"
    elif case == "weights_shape":  # other tensors under a valid checksum
        with zipfile.ZipFile(path) as zf:
            state = load_safetensors(zf.read(WEIGHTS))
        name = next(iter(state))
        state[name] = torch.zeros(*state[name].shape[:-1], state[name].shape[-1] + 1)
        weights = save_safetensors(state)
        _rewrite(path, bad, weights=weights,
                 spec=lambda s: {**s, "weights": {**s["weights"], "sha256": hashlib.sha256(weights).hexdigest()}})
        match = "shapes do not match"
    elif case == "checksum":
        with zipfile.ZipFile(path) as zf:
            w = bytearray(zf.read(WEIGHTS))
        w[-1] ^= 0xFF
        _rewrite(path, bad, weights=bytes(w))
        match = "checksum"
    else:
        bad.write_bytes(pickle.dumps(Boom()))
        match = "not a metagen model file"
    with pytest.raises(ModelFileError, match=match):
        metagen.load(bad)
    assert "pwned" not in capsys.readouterr().out


def test_write_is_atomic(saved, tmp_path, monkeypatch):
    path, _ = saved
    fitted = metagen.load(path).fitted
    target = tmp_path / "keep.metagen"
    save_model(fitted, target)
    before = target.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("metagen.model_file.zipfile.ZipFile.writestr", fail)
    with pytest.raises(OSError):
        save_model(fitted, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.metagen"]
