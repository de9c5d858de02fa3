"""The model file: a zip of ``spec.json`` and ``weights.safetensors``. Nothing in it is ever executed.

Loading reads JSON and raw tensors only (no pickle), accepts exactly the two
expected members, checks the format version, the weights' checksum and every
tensor's shape against the architecture the spec describes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from metagen.config import NetConfig
from metagen.errors import ModelFileError
from metagen.fit import FittedModel, Member
from metagen.network import MLP
from metagen.preprocess import Preprocessor

FORMAT = "metagen-model"
FORMAT_VERSION = 1
SPEC = "spec.json"
WEIGHTS = "weights.safetensors"
MAX_SPEC_BYTES = 64 * 1024 * 1024
MAX_WEIGHTS_BYTES = 4 * 1024**3


def _versions() -> dict[str, str]:
    from metagen import __version__

    return {"metagen": __version__, "torch": torch.__version__}


def save_model(model: FittedModel, path: str | Path) -> Path:
    """Write atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    tensors = {f"m{i}/{k}": v.contiguous() for i, m in enumerate(model.members) for k, v in m.state_dict.items()}
    weights = save_safetensors(tensors)
    spec = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": _versions(),
        "target": model.target,
        "task": model.task,
        "classes": model.classes,
        "columns": model.columns,
        "preprocessor": model.preprocessor.to_json(),
        "members": [{"config": m.config.to_json(), "weight": m.weight} for m in model.members],
        "n_in": model.n_in,
        "n_out": model.n_out,
        "y_mean": model.y_mean,
        "y_std": model.y_std,
        "metrics": model.metrics,
        "valid_score": model.valid_score,
        "leaderboard": model.leaderboard[:20],
        "provenance": model.provenance,
        "weights": {
            "sha256": hashlib.sha256(weights).hexdigest(),
            "shapes": {k: list(v.shape) for k, v in tensors.items()},
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(SPEC, json.dumps(spec, indent=1, default=_json_default, allow_nan=True))
            zf.writestr(WEIGHTS, weights)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _json_default(value: object) -> object:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_spec(path: str | Path) -> tuple[dict, bytes]:
    """Open a model file and return its spec and raw weight bytes, after every safety check."""
    path = Path(path)
    hint = "Pass a file written by `metagen fit` (extension .metagen)."
    if not path.is_file():
        raise ModelFileError(f"Model file not found: {path}.", hint)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            if set(infos) != {SPEC, WEIGHTS}:
                unexpected = sorted(set(infos) - {SPEC, WEIGHTS})
                raise ModelFileError(
                    f"{path} is not a metagen model file (members: {', '.join(sorted(infos)) or 'none'}"
                    + (f"; unexpected: {', '.join(unexpected)}" if unexpected else "") + ").",
                    hint,
                )
            if infos[SPEC].file_size > MAX_SPEC_BYTES or infos[WEIGHTS].file_size > MAX_WEIGHTS_BYTES:
                raise ModelFileError(f"{path} has members larger than a model file can have.", hint)
            spec = json.loads(zf.read(SPEC).decode("utf-8"))
            weights = zf.read(WEIGHTS)
    except zipfile.BadZipFile as exc:
        raise ModelFileError(f"{path} is not a metagen model file, or it is truncated ({exc}).", hint) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path} has a spec.json that is not valid JSON.", hint) from exc
    except (OSError, EOFError, zipfile.LargeZipFile) as exc:
        raise ModelFileError(f"Cannot read {path}: {exc}.", hint) from exc
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a metagen model file.", hint)
    version = spec.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has model format version {version}; this metagen reads up to {FORMAT_VERSION}.",
            "Upgrade metagen (pip install -U metagen) to load it.",
        )
    if hashlib.sha256(weights).hexdigest() != spec.get("weights", {}).get("sha256"):
        raise ModelFileError(f"{path}: the weights do not match their checksum (corrupt file).", hint)
    return spec, weights


def load_fitted(path: str | Path) -> FittedModel:
    spec, weights = read_spec(path)
    try:
        configs = [NetConfig.from_json(m["config"]) for m in spec["members"]]
        state = load_safetensors(weights)
        expected = {f"m{i}/{k}": list(v.shape) for i, config in enumerate(configs)
                    for k, v in MLP(spec["n_in"], spec["n_out"], config).state_dict().items()}
        found = {k: list(v.shape) for k, v in state.items()}
        if found != expected or spec["weights"]["shapes"] != expected:
            raise ModelFileError(
                f"{path}: the weights' shapes do not match the architecture in its spec.",
                "The file is corrupt or was edited; fit the model again.",
            )
        return FittedModel(
            columns=spec["columns"],
            target=spec["target"],
            task=spec["task"],
            classes=spec["classes"],
            preprocessor=Preprocessor.from_json(spec["preprocessor"]),
            members=[
                Member(config, {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(f"m{i}/")},
                       float(m["weight"]))
                for i, (config, m) in enumerate(zip(configs, spec["members"]))
            ],
            n_in=spec["n_in"],
            n_out=spec["n_out"],
            y_mean=spec["y_mean"],
            y_std=spec["y_std"],
            metrics=spec.get("metrics", {}),
            valid_score=spec.get("valid_score", float("nan")),
            leaderboard=spec.get("leaderboard", []),
            provenance=spec.get("provenance", {}),
        )
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path} has an incomplete or invalid spec ({exc}).", "Fit the model again.") from exc
    except SafetensorError as exc:
        raise ModelFileError(f"{path}: cannot read the weights ({exc}).", "Fit the model again.") from exc
