"""Typed errors. Every message says what was wrong and what to do next.

The CLI turns a ``MetaGenError`` into one line on stderr and exit code 1; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MetaGenError(Exception):
    """Base class of every error a user can cause and fix."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} {hint}" if hint else message)


class DataError(MetaGenError, ValueError):
    """The input table cannot be used as it is (empty, no target, bad values)."""


class TargetError(DataError):
    """The target column is missing, misspelt or unusable for learning."""


class SchemaError(DataError):
    """Rows given for prediction do not match the columns the model was fitted on."""


class ModelFileError(MetaGenError, ValueError):
    """A model file is missing, corrupt, unsafe or from a newer metagen."""


class ConfigError(MetaGenError, ValueError):
    """An option or parameter has a value metagen cannot use."""


class StorageError(MetaGenError):
    """The Optuna storage cannot be opened or written (locked SQLite file, bad URL)."""


class BudgetError(MetaGenError):
    """The time budget ended before any usable model was trained."""
