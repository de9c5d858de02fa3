"""The estimators honour scikit-learn's contract (check_estimator) and work in pipelines."""

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.estimator_checks import parametrize_with_checks

from metagen import MetaGenClassifier, MetaGenRegressor

FAST = dict(time_budget=30, n_trials=1, max_steps=150, random_state=0)


@parametrize_with_checks([MetaGenClassifier(**FAST), MetaGenRegressor(**FAST)])
def test_sklearn_contract(estimator, check):
    check(estimator)


def test_dataframe_with_strings_and_missing_values():
    rng = np.random.default_rng(0)
    n = 300
    X = pd.DataFrame({
        "num": rng.normal(size=n),
        "color": rng.choice(["red", "green", "blue"], size=n),
        "flag": rng.choice([True, False], size=n),
    })
    X.loc[::7, "num"] = np.nan
    y = np.where((X["num"].fillna(0) > 0) ^ (X["color"] == "red"), "yes", "no")
    clf = MetaGenClassifier(**{**FAST, "n_trials": 3}).fit(X, y)  # the first trial is linear: no XOR
    assert list(clf.feature_names_in_) == ["num", "color", "flag"]
    assert set(clf.classes_) == {"no", "yes"}
    proba = clf.predict_proba(X)
    assert proba.shape == (n, 2) and np.allclose(proba.sum(1), 1)
    assert clf.score(X, y) > 0.8


def test_clone_pipeline_and_cross_val_score():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 4))
    y = X[:, 0] * 2 - X[:, 1] + 0.1 * rng.normal(size=200)
    pipe = make_pipeline(FunctionTransformer(), MetaGenRegressor(**FAST))
    scores = cross_val_score(clone(pipe), X, y, cv=3)
    assert scores.mean() > 0.7
