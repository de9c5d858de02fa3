"""metagen: a meta-learned generator of tabular models: families searched with Optuna, one ensemble, no pickle.

Loading a model (``metagen.load``) imports only the serving code; the training
stack (Optuna, the search, the families) is imported on first use of a name that
needs it.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from metagen.errors import (
    BudgetError,
    ConfigError,
    DataError,
    MetaGenError,
    ModelFileError,
    SchemaError,
    StorageError,
    TargetError,
)
from metagen.predictor import Predictor, load

_LAZY = {
    "FitOptions": "metagen.fit",
    "fit_table": "metagen.fit",
    "FittedModel": "metagen.model",
    "MetaGenClassifier": "metagen.estimator",
    "MetaGenRegressor": "metagen.estimator",
    "NetConfig": "metagen.config",
    "Table": "metagen.table",
    "make_table": "metagen.table",
    "read_csv": "metagen.table",
    "read_table": "metagen.table",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'metagen' has no attribute {name!r}")


__all__ = [
    "BudgetError",
    "ConfigError",
    "DataError",
    "FitOptions",
    "FittedModel",
    "MetaGenClassifier",
    "MetaGenError",
    "MetaGenRegressor",
    "ModelFileError",
    "NetConfig",
    "Predictor",
    "SchemaError",
    "StorageError",
    "Table",
    "TargetError",
    "__version__",
    "fit_table",
    "load",
    "make_table",
    "read_csv",
    "read_table",
]
