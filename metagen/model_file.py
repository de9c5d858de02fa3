"""The model file: a zip of ``spec.json`` and ``weights.safetensors``. Nothing in it is ever executed.

Loading reads JSON and raw arrays only (no pickle), accepts exactly the two
expected members, checks the format version, the weights' checksum and every
part's arrays against what its kind expects. Each member names its family, its
view of the columns and its parts; part ``j`` of member ``i`` keeps its arrays
under ``m{i}/p{j}/<name>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from metagen.errors import ModelFileError
from metagen.model import FittedModel, Member
from metagen.preprocess import Preprocessor
from metagen.serving import PART_KINDS

FORMAT = "metagen-model"
FORMAT_VERSION = 2
SPEC = "spec.json"
WEIGHTS = "weights.safetensors"
MAX_SPEC_BYTES = 64 * 1024 * 1024
MAX_WEIGHTS_BYTES = 4 * 1024**3


def _versions() -> dict[str, str]:
    import torch

    from metagen import __version__

    return {"metagen": __version__, "torch": torch.__version__, "numpy": np.__version__}


def save_model(model: FittedModel, path: str | Path) -> Path:
    """Write atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    tensors: dict[str, np.ndarray] = {}
    members = []
    for i, member in enumerate(model.members):
        parts = []
        for j, part in enumerate(member.parts):
            meta, arrays = part.to_arrays()
            parts.append({"kind": part.kind, "meta": meta})
            tensors.update({f"m{i}/p{j}/{k}": np.ascontiguousarray(v) for k, v in arrays.items()})
        members.append({"family": member.family, "config": member.config, "view": member.view,
                        "weight": member.weight, "score": member.score, "trial": member.trial, "parts": parts})
    weights = save_safetensors(tensors)
    spec = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": _versions(),
        "target": model.target,
        "task": model.task,
        "classes": model.classes,
        "columns": model.columns,
        "views": {name: view.to_json() for name, view in model.views.items()},
        "members": members,
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
            zf.writestr(SPEC, json.dumps(spec, indent=1, default=json_default, allow_nan=True))
            zf.writestr(WEIGHTS, weights)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def json_default(value: object) -> object:
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
    if isinstance(version, int) and version < FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has model format version {version}, written by a metagen before model families.",
            "Fit the model again with this metagen.",
        )
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has model format version {version}; this metagen reads up to {FORMAT_VERSION}.",
            "Upgrade metagen (pip install -U metagen) to load it.",
        )
    if hashlib.sha256(weights).hexdigest() != spec.get("weights", {}).get("sha256"):
        raise ModelFileError(f"{path}: the weights do not match their checksum (corrupt file).", hint)
    return spec, weights


def _members(spec: dict, state: dict[str, np.ndarray]) -> tuple[dict[str, Preprocessor], list[Member]]:
    views = {name: Preprocessor.from_json(v) for name, v in spec["views"].items()}
    members, used = [], set()
    for i, m in enumerate(spec["members"]):
        if m["view"] not in views:
            raise ValueError(f"member {i} reads view {m['view']!r}, which the file does not have")
        parts = []
        for j, p in enumerate(m["parts"]):
            if p["kind"] not in PART_KINDS:
                raise ValueError(f"member {i} has a part of unknown kind {p['kind']!r}")
            prefix = f"m{i}/p{j}/"
            arrays = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            used |= {prefix + k for k in arrays}
            parts.append(PART_KINDS[p["kind"]].from_arrays(p["meta"], arrays))
        if not parts:
            raise ValueError(f"member {i} has no parts")
        members.append(Member(m["family"], m["config"], m["view"], parts, float(m["weight"]),
                              float(m.get("score", float("nan"))), m.get("trial")))
    if used != set(state):
        raise ValueError("the weights hold arrays that no member reads")
    return views, members


def load_fitted(path: str | Path) -> FittedModel:
    spec, weights = read_spec(path)
    try:
        state = load_safetensors(weights)
        found = {k: list(v.shape) for k, v in state.items()}
        if spec["weights"]["shapes"] != found:
            raise ModelFileError(f"{path}: the weights' shapes do not match its spec.",
                                 "The file is corrupt or was edited; fit the model again.")
        views, members = _members(spec, state)
        if not members:
            raise ValueError("no members")
        return FittedModel(
            columns=spec["columns"],
            target=spec["target"],
            task=spec["task"],
            classes=spec["classes"],
            views=views,
            members=members,
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
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ModelFileError(f"{path} has an incomplete or invalid spec ({exc}).", "Fit the model again.") from exc
    except SafetensorError as exc:
        raise ModelFileError(f"{path}: cannot read the weights ({exc}).", "Fit the model again.") from exc
