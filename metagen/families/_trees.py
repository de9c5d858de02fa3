"""scikit-learn's fitted trees as :class:`~metagen.serving.trees.TreePart` node arrays.

The attributes read here are private (``tree_``, ``_predictors``, ``_preprocessor``) and
change between scikit-learn versions, so every export is checked against the
estimator's own predictions before it is used (:func:`check_export`).
"""

from __future__ import annotations

import numpy as np

from metagen.serving.trees import TreePart, float32_below

TOLERANCE = 1e-6


class ExportError(RuntimeError):
    """The node arrays do not reproduce scikit-learn's predictions (a scikit-learn version metagen does not know)."""


def _assemble(trees: list[dict], n_out: int, n_columns: int, baseline: np.ndarray, scale: float, link: str,
              regression: bool, bitsets: list[np.ndarray], known: np.ndarray) -> TreePart:
    offsets = np.cumsum([0] + [len(t["feature"]) for t in trees])
    cat = np.concatenate([t["category_set"] for t in trees])
    leaf = np.concatenate([t["leaf"] for t in trees])
    nodes = np.arange(offsets[-1])
    left = np.concatenate([t["left"] + o for t, o in zip(trees, offsets)])
    right = np.concatenate([t["right"] + o for t, o in zip(trees, offsets)])
    left[leaf], right[leaf] = nodes[leaf], nodes[leaf]
    threshold = np.concatenate([t["threshold"] for t in trees]).astype(np.float64)
    threshold[leaf | (cat >= 0)] = np.inf
    feature = np.concatenate([t["feature"] for t in trees]).astype(np.int64)
    feature[leaf] = 0
    value = np.concatenate([t["value"] for t in trees])
    value[~leaf] = 0.0
    return TreePart(
        feature=feature.astype(np.int32), threshold=float32_below(threshold), left=left.astype(np.int32),
        right=right.astype(np.int32), missing_left=np.concatenate([t["missing_left"] for t in trees]).astype(bool),
        category_set=cat.astype(np.int32),
        bitsets=np.stack(bitsets).astype(np.uint32) if bitsets else np.zeros((0, 8), np.uint32),
        known=known.astype(np.uint32), value=value, roots=offsets[:-1].astype(np.int32),
        baseline=baseline.astype(np.float64), scale=float(scale), link=link,
        depth=max(t["depth"] for t in trees), regression=regression,
    )


def from_forest(forest, n_out: int, n_columns: int, regression: bool) -> TreePart:
    """A fitted RandomForest / ExtraTrees: the mean of its trees' leaf values (class fractions or means)."""
    trees = []
    for est in forest.estimators_:
        t = est.tree_
        leaf = t.children_left < 0
        if regression:
            value = t.value[:, 0, :1].astype(np.float64)
        else:
            frac = t.value[:, 0, :] / np.maximum(t.value[:, 0, :].sum(axis=1, keepdims=True), 1e-300)
            value = np.zeros((t.node_count, n_out))
            value[:, np.asarray(forest.classes_, dtype=np.int64)] = frac
        trees.append({
            "feature": np.where(leaf, 0, t.feature), "threshold": t.threshold, "left": t.children_left,
            "right": t.children_right, "missing_left": t.missing_go_to_left.astype(bool), "leaf": leaf,
            "category_set": np.full(t.node_count, -1), "value": value.astype(np.float32),
            "depth": int(t.max_depth),
        })
    known = np.full((n_columns, 8), 0xFFFFFFFF, dtype=np.uint32)
    return _assemble(trees, 1 if regression else n_out, n_columns, np.zeros(1 if regression else n_out),
                     1.0 / len(trees), "identity", regression, [], known)


def from_boosting(model, n_out: int, n_columns: int, regression: bool) -> TreePart:
    """A fitted HistGradientBoosting model: baseline + sum of leaf values, then softmax for classes.

    With categorical features, scikit-learn reorders columns (categories first) and re-codes
    categories; both are mapped back here so the arrays read the ordinal view as it is.
    """
    is_cat = getattr(model, "is_categorical_", None)
    if is_cat is None:
        order, categories = np.arange(n_columns), []
    else:
        order = np.concatenate([np.flatnonzero(is_cat), np.flatnonzero(~is_cat)])
        categories = [np.asarray(c, dtype=np.float64) for c in
                      model._preprocessor.named_transformers_["encoder"].categories_]
        categories = [c[np.isfinite(c)].astype(np.int64) for c in categories]
    known = np.full((n_columns, 8), 0xFFFFFFFF, dtype=np.uint32)
    for j, cats in enumerate(categories):
        known[order[j]] = _bits(cats)
    k_out = 1 if regression else n_out
    classes = None if regression else np.asarray(model.classes_, dtype=np.int64)
    # Output column of each of the model's trees per iteration; a binary model's one tree is the logit of
    # its second class, stored as softmax over [0, logit].
    columns = [0] if regression else (list(classes[1:]) if len(classes) == 2 else list(classes))
    baseline = np.zeros(k_out) if regression else np.full(k_out, -np.inf)
    if not regression:
        baseline[classes] = 0.0
    baseline[columns] = np.asarray(model._baseline_prediction, dtype=np.float64).reshape(-1)
    trees, bitsets = [], []
    for iteration in model._predictors:
        for column, predictor in zip(columns, iteration):
            nodes = predictor.nodes
            leaf = nodes["is_leaf"].astype(bool)
            cat_nodes = nodes["is_categorical"].astype(bool) & ~leaf
            category_set = np.full(len(nodes), -1)
            for i in np.flatnonzero(cat_nodes):
                local = int(nodes["feature_idx"][i])
                cats = categories[local]
                raw = predictor.raw_left_cat_bitsets[nodes["bitset_idx"][i]]
                left_codes = [c for c in range(len(cats)) if (raw[c >> 5] >> (c & 31)) & 1]
                category_set[i] = len(bitsets)
                bitsets.append(_bits(cats[left_codes]))
            value = np.zeros((len(nodes), k_out))
            value[:, column] = nodes["value"]
            trees.append({
                "feature": order[nodes["feature_idx"].astype(np.int64)], "threshold": nodes["num_threshold"],
                "left": nodes["left"].astype(np.int64), "right": nodes["right"].astype(np.int64),
                "missing_left": nodes["missing_go_to_left"].astype(bool), "leaf": leaf,
                "category_set": category_set, "value": value, "depth": int(nodes["depth"].max()),
            })
    return _assemble(trees, k_out, n_columns, baseline, 1.0, "identity" if regression else "softmax",
                     regression, bitsets, known)


def _bits(codes: np.ndarray) -> np.ndarray:
    words = np.zeros(8, dtype=np.uint32)
    for c in np.asarray(codes, dtype=np.int64):
        if 0 <= c < 256:
            words[c >> 5] |= np.uint32(1 << (c & 31))
    return words


def check_export(part: TreePart, X: np.ndarray, expected: np.ndarray) -> None:
    """Raise :class:`ExportError` unless the arrays predict what scikit-learn predicts on ``X``."""
    got = part.predict(X)
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=0, atol=TOLERANCE):
        diff = np.max(np.abs(got - expected)) if got.shape == expected.shape else "shape"
        raise ExportError(f"exported trees differ from scikit-learn's predictions by {diff}")
