"""metagen: a meta-learned start, an Optuna search, and a model file that loads without pickle."""

from __future__ import annotations

__version__ = "0.1.0"

from metagen.config import NetConfig
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
from metagen.estimator import MetaGenClassifier, MetaGenRegressor
from metagen.fit import FitOptions, FittedModel, fit_table
from metagen.predictor import Predictor, load
from metagen.table import Table, make_table, read_csv, read_table

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
