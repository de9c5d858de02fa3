"""Benchmarks behind ``metagen bench``: one harness (suites, split, records, summary), many commands."""

from metagen.bench.harness import (
    RunRecord,
    Split,
    anytime_plot,
    append_record,
    read_records,
    split_table,
    suite_tables,
    summarise,
    summary_table,
    write_json,
)
from metagen.bench.peers import METHODS, BenchConfig, Method, available, run_benchmark

__all__ = [
    "METHODS",
    "BenchConfig",
    "Method",
    "RunRecord",
    "Split",
    "anytime_plot",
    "append_record",
    "available",
    "read_records",
    "run_benchmark",
    "split_table",
    "suite_tables",
    "summarise",
    "summary_table",
    "write_json",
]
