"""Optional packages: one import point, so a missing one always ends in one line naming the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from metagen.errors import ConfigError


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` for ``purpose``, or raise a ConfigError that names the pip extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        raise ConfigError(f"{purpose} needs the {package} package, which is not installed.",
                          f"Install it with: pip install 'metagen[{extra}]'") from exc


def pyplot() -> ModuleType:
    """matplotlib's pyplot on the file-only Agg backend (no display is needed or opened)."""
    matplotlib = require("matplotlib", "plot", "Plotting")
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")
