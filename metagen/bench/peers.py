"""``metagen bench peers``: metagen against what users would pick instead.

Each method is a factory ``(task, budget, seed, threads) -> estimator`` named by
``"module:function"``; the runner hands that name to a fresh worker process per run, so
a crash, a hang or a leak in one method cannot take the benchmark down. Adding a method
(a new peer, a test's crashing method) is one :class:`Method` entry.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import multiprocessing
import os
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metagen.bench import worker
from metagen.bench.harness import RunRecord, append_record, read_records, run_key, suite_tables
from task_corpus import load_table


@dataclass(frozen=True)
class Method:
    """A benchmarked method; ``factory`` is imported only inside the run's own process."""

    name: str
    factory: str
    budgeted: bool = False
    """Run once per budget (label ``name@B``); otherwise once, with library defaults."""
    needs: tuple[str, ...] = ()
    """Modules it imports; when one is missing the method is reported absent and skipped."""
    largest_budget_only: bool = False
    install: str = "pip install 'metagen[peers]'"
    """What brings ``needs`` when they are missing."""


def _here(function: str) -> str:
    return f"{__name__}:{function}"


METHODS = [
    Method("metagen", _here("metagen"), budgeted=True),
    Method("metagen-nometa", _here("metagen_nometa"), budgeted=True),
    Method("metagen-mlp", _here("metagen_mlp"), budgeted=True),
    *(Method(f"metagen-no-{family}", _here(f"metagen_no_{family}"), budgeted=True)
      for family in ("gbdt", "forest", "linear", "mlp")),
    Method("lightgbm", _here("lightgbm"), needs=("lightgbm",)),
    Method("hgb", _here("hgb")),
    Method("random-forest", _here("random_forest")),
    Method("linear", _here("linear")),
    Method("flaml", _here("flaml"), budgeted=True, needs=("flaml.automl.automl",)),
    Method("realmlp-td", _here("realmlp_td"), needs=("pytabkit",)),
    Method("tabm-d", _here("tabm_d"), needs=("pytabkit",)),
    Method("autogluon", _here("autogluon"), budgeted=True, needs=("autogluon.tabular",), largest_budget_only=True,
           install="pip install autogluon.tabular"),
]


def available(methods: list[Method]) -> tuple[list[Method], dict[str, str]]:
    """Methods whose modules import here, and for the others why not and what to install."""
    present, absent = [], {}
    for method in methods:
        for module in method.needs:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                absent[method.name] = f"{exc.name or module} is not installed; {method.install}"
                break
            except Exception as exc:  # noqa: BLE001 - a broken optional install is as absent as a missing one
                absent[method.name] = f"{type(exc).__name__}: {exc}"
                break
        else:
            present.append(method)
    return present, absent


# --- the runner ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    """Where tables come from and how every run is cut and resourced."""

    suite: str
    split: str | None = None
    test_size: float = 0.25
    max_train_rows: int | None = None
    threads: int = 2
    timeout_slack_s: float = 60.0
    """A run is killed after budget × 3 + this (the largest budget for unbudgeted methods)."""
    families: tuple[str, ...] | None = None
    """Model families for the methods that take a ``families`` parameter (metagen's); None: their own."""


@dataclass(frozen=True)
class Run:
    """One (dataset, method, budget, seed); ``budget`` is None for methods run with their defaults."""

    dataset: str
    task: str
    method: Method
    budget: float | None
    seed: int

    @property
    def label(self) -> str:
        return self.method.name if self.budget is None else f"{self.method.name}@{self.budget:g}"


def plan(datasets: list[tuple[str, str]], methods: list[Method], budgets: list[float], seeds: list[int]) -> list[Run]:
    """Every (seed, dataset, method, budget); dataset by dataset, so partial results cover whole tables."""
    runs = []
    for seed in seeds:
        for name, task in datasets:
            for method in methods:
                if not method.budgeted:
                    runs.append(Run(name, task, method, None, seed))
                    continue
                for budget in budgets[-1:] if method.largest_budget_only else budgets:
                    runs.append(Run(name, task, method, budget, seed))
    return runs


def run_benchmark(
    config: BenchConfig,
    methods: list[Method],
    budgets: list[float],
    seeds: list[int],
    csv_path: Path,
    on_record: Callable[[RunRecord, int, int], None] | None = None,
    labels: set[str] | None = None,
) -> list[RunRecord]:
    """Run what ``csv_path`` does not hold yet, one process at a time; return the records of these runs.

    Records of other methods or budgets in the same file stay there but are not returned, so a
    summary compares exactly the methods asked for. ``labels`` (``metagen@5``): a method named there runs at
    those budgets only.
    """
    budgets = sorted(budgets)
    _thread_env(config.threads)
    datasets = [(ref.name, load_table(ref).task) for ref in suite_tables(config.suite, config.split)]
    done = {r.key for r in read_records(csv_path)}
    restricted = {label.split("@")[0] for label in labels or ()}
    planned = [r for r in plan(datasets, methods, budgets, seeds)
               if r.method.name not in restricted or r.label in (labels or ())]
    keys = {run_key(r.dataset, r.label, r.budget, r.seed) for r in planned}
    todo = [r for r in planned if run_key(r.dataset, r.label, r.budget, r.seed) not in done]
    for i, run in enumerate(todo, 1):
        budget = run.budget if run.budget is not None else budgets[-1]
        record = run_once(run, config, budget * 3 + config.timeout_slack_s)  # room for refits, not for a hang
        append_record(csv_path, record)
        if on_record is not None:
            on_record(record, i, len(todo))
    return [r for r in read_records(csv_path) if r.key in keys]


_FORKS = multiprocessing.get_context("forkserver")
_FORKS.set_forkserver_preload(["metagen.bench.worker"])


def run_once(run: Run, config: BenchConfig, timeout: float) -> RunRecord:
    """One run in a fresh process (forked from a server that has metagen imported), killed on overrun."""
    job = {
        "suite": config.suite, "split": config.split, "dataset": run.dataset, "factory": run.method.factory,
        "budget": run.budget, "seed": run.seed, "test_size": config.test_size,
        "max_train_rows": config.max_train_rows, "threads": config.threads, "families": config.families,
    }
    record = RunRecord(run.dataset, run.task, run.label, run.budget, run.seed, "error")
    with tempfile.TemporaryDirectory(prefix="metagen-bench-") as tmp:
        result_path, log_path = Path(tmp) / "result.json", Path(tmp) / "output.log"
        start = time.perf_counter()
        proc = _FORKS.Process(target=worker.child, args=(job, str(result_path), str(log_path)), daemon=True)
        proc.start()
        proc.join(timeout)
        if proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the run and anything it started
            proc.join()
            record.status, record.message = "timeout", f"killed after {timeout:g}s"
        elif not result_path.exists():
            tail = _last_line(log_path.read_text(errors="replace")) if log_path.exists() else ""
            record.message = f"exit code {proc.exitcode}" + (f": {tail}" if tail else "")
        else:
            result = json.loads(result_path.read_text())
            record.message = result.pop("error", "")
            for key, value in result.items():
                setattr(record, key, math.nan if value is None else value)
            record.status = "error" if record.message else "ok"
        record.wall_s = time.perf_counter() - start
    return record


def _thread_env(threads: int) -> None:
    """Runs get ``threads`` threads that sleep when idle; set before the fork server starts, which reads them."""
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


# --- methods: each returns an unfitted estimator with fit / predict(_proba) / classes_ ----------


def metagen(task: str, budget: float, seed: int, threads: int, use_meta: bool = True,  # noqa: ANN201
            families: tuple[str, ...] | None = None):
    """The estimator as users get it: the shipped meta-model's portfolio and starts, then the search."""
    from metagen.estimator import MetaGenClassifier, MetaGenRegressor

    cls = MetaGenRegressor if task == "regression" else MetaGenClassifier
    return cls(time_budget=budget, random_state=seed, use_meta=use_meta, families=families)


def metagen_nometa(task: str, budget: float, seed: int, threads: int):  # noqa: ANN201
    """The search from each family's defaults and random starts only: what the meta-model has to beat."""
    return metagen(task, budget, seed, threads, use_meta=False)


def metagen_mlp(task: str, budget: float, seed: int, threads: int):  # noqa: ANN201
    """The network-only generator, so that its meta-learning stays measurable alone."""
    return metagen(task, budget, seed, threads, families=("mlp",))


def _without(family: str) -> tuple[str, ...]:
    from metagen.families import ALL

    return tuple(f for f in ALL if f != family)


def metagen_no_gbdt(task: str, budget: float, seed: int, threads: int):  # noqa: ANN201
    """Leave-one-family-out rows: what each family adds to the ensemble."""
    return metagen(task, budget, seed, threads, families=_without("gbdt"))


def metagen_no_forest(task: str, budget: float, seed: int, threads: int):  # noqa: ANN201
    return metagen(task, budget, seed, threads, families=_without("forest"))


def metagen_no_linear(task: str, budget: float, seed: int, threads: int):  # noqa: ANN201
    return metagen(task, budget, seed, threads, families=_without("linear"))


def metagen_no_mlp(task: str, budget: float, seed: int, threads: int):  # noqa: ANN201
    return metagen(task, budget, seed, threads, families=_without("mlp"))


def lightgbm(task: str, budget: None, seed: int, threads: int):  # noqa: ANN201
    from lightgbm import LGBMClassifier, LGBMRegressor

    cls = LGBMRegressor if task == "regression" else LGBMClassifier
    return cls(n_jobs=threads, random_state=seed, verbose=-1)


def hgb(task: str, budget: None, seed: int, threads: int):  # noqa: ANN201
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    cls = HistGradientBoostingRegressor if task == "regression" else HistGradientBoostingClassifier
    return cls(random_state=seed)  # pandas categories are used as categorical features


def random_forest(task: str, budget: None, seed: int, threads: int):  # noqa: ANN201
    from sklearn.compose import ColumnTransformer, make_column_selector
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OrdinalEncoder

    cls = RandomForestRegressor if task == "regression" else RandomForestClassifier
    codes = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1)
    columns = ColumnTransformer([("cat", codes, make_column_selector(dtype_include="category"))], remainder="passthrough")
    return make_pipeline(columns, cls(n_jobs=threads, random_state=seed))


def linear(task: str, budget: None, seed: int, threads: int):  # noqa: ANN201
    """Logistic regression or ridge on standardised numbers and one-hot categories."""
    from sklearn.compose import ColumnTransformer, make_column_selector
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    columns = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler()),
         make_column_selector(dtype_include="number")),
        ("cat", OneHotEncoder(handle_unknown="ignore"), make_column_selector(dtype_include="category")),
    ])
    model = Ridge() if task == "regression" else LogisticRegression(max_iter=1000, random_state=seed)
    return make_pipeline(columns, model)


def flaml(task: str, budget: float, seed: int, threads: int):  # noqa: ANN201
    from flaml import AutoML

    metric = {"binary": "roc_auc", "multiclass": "roc_auc_ovr", "regression": "r2"}[task]
    kind = "regression" if task == "regression" else "classification"
    return AutoML(task=kind, time_budget=budget, metric=metric, n_jobs=threads, seed=seed, verbose=0)


def realmlp_td(task: str, budget: None, seed: int, threads: int):  # noqa: ANN201
    from pytabkit import RealMLP_TD_Classifier, RealMLP_TD_Regressor

    cls = RealMLP_TD_Regressor if task == "regression" else RealMLP_TD_Classifier
    return _impute_numbers(cls(device="cpu", random_state=seed, n_threads=threads, verbosity=0))


def tabm_d(task: str, budget: None, seed: int, threads: int):  # noqa: ANN201
    from pytabkit import TabM_D_Classifier, TabM_D_Regressor

    cls = TabM_D_Regressor if task == "regression" else TabM_D_Classifier
    return _impute_numbers(cls(device="cpu", random_state=seed, n_threads=threads, verbosity=0))


def _impute_numbers(model):  # noqa: ANN001, ANN202
    """pytabkit takes pandas categories as they are but not missing numbers: fill them with medians."""
    from sklearn.compose import ColumnTransformer, make_column_selector
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline

    numbers = ColumnTransformer([("num", SimpleImputer(strategy="median", keep_empty_features=True),
                                  make_column_selector(dtype_include="number"))],
                                remainder="passthrough", verbose_feature_names_out=False)
    return make_pipeline(numbers.set_output(transform="pandas"), model)


class _AutoGluon:
    """AutoGluon's TabularPredictor behind fit / predict_proba / predict (it wants the label in the frame)."""

    def __init__(self, task: str, budget: float, seed: int, threads: int) -> None:
        self.task, self.budget, self.seed, self.threads = task, budget, seed, threads

    def fit(self, X, y) -> "_AutoGluon":  # noqa: ANN001
        from autogluon.tabular import TabularPredictor

        metric = {"binary": "roc_auc", "multiclass": "roc_auc_ovo_macro", "regression": "r2"}[self.task]
        self.model_ = TabularPredictor(label="__y__", problem_type=self.task, eval_metric=metric,
                                       path=tempfile.mkdtemp(prefix="autogluon-"), verbosity=0)
        self.model_.fit(X.assign(__y__=y), time_limit=self.budget, num_cpus=self.threads,
                        ag_args_fit={"random_seed": self.seed})
        self.classes_ = np.asarray(self.model_.class_labels) if self.task != "regression" else None
        return self

    def predict_proba(self, X) -> np.ndarray:  # noqa: ANN001
        return self.model_.predict_proba(X, as_multiclass=True).to_numpy()

    def predict(self, X) -> np.ndarray:  # noqa: ANN001
        return self.model_.predict(X).to_numpy()


def autogluon(task: str, budget: float, seed: int, threads: int) -> _AutoGluon:
    return _AutoGluon(task, budget, seed, threads)
