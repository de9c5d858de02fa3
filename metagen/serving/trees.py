"""A tree ensemble as node arrays, predicted level by level with vectorised numpy.

The same arrays hold a gradient-boosted model (sum of leaf values, then softmax) and
a forest (mean of leaf values). All trees share one node numbering; a leaf points to
itself, so every row takes exactly ``depth`` steps and no row needs its own loop.

Decisions follow scikit-learn's: ``x <= threshold`` goes left, a missing value goes
the way the node learned, a category goes left when its bit is set, and a category
the model never saw counts as missing. Thresholds are stored as the largest float32
not above scikit-learn's float64 threshold, so float32 inputs take the same branch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

# Rows x trees x outputs gathered at once; bounds the memory of one prediction batch.
_BATCH_CELLS = 1 << 22


@dataclass
class TreePart:
    kind: ClassVar[str] = "trees"

    feature: np.ndarray
    """int32 (nodes,): the column a node splits on (0 at leaves)."""
    threshold: np.ndarray
    """float32 (nodes,): numeric split points (+inf at leaves and categorical nodes)."""
    left: np.ndarray
    right: np.ndarray
    """int32 (nodes,): children; a leaf is its own child."""
    missing_left: np.ndarray
    """bool (nodes,): where a missing value (or an unseen category) goes."""
    category_set: np.ndarray
    """int32 (nodes,): row of ``bitsets`` for a categorical split, -1 for a numeric one."""
    bitsets: np.ndarray
    """uint32 (sets, 8): categories that go left, one bit per category code 0..255."""
    known: np.ndarray
    """uint32 (columns, 8): the category codes each column had in training (all bits for numeric columns)."""
    value: np.ndarray
    """float32 or float64 (nodes, outputs): leaf values (zeros at inner nodes)."""
    roots: np.ndarray
    """int32 (trees,)"""
    baseline: np.ndarray
    """float64 (outputs,): added to the (scaled) sum; -inf for a class the model never saw."""
    scale: float
    """1 for boosting (sum of trees), 1 / trees for a forest (mean of trees)."""
    link: str
    """``softmax`` (boosted classes), ``identity`` (a forest's probabilities, or regression)."""
    depth: int
    regression: bool

    def leaves(self, X: np.ndarray) -> np.ndarray:
        """The leaf each row reaches in each tree: int32 (rows, trees).

        Each level moves only the (row, tree) pairs still at an inner node, so the work
        follows the paths' real lengths, not the deepest tree's.
        """
        X = np.ascontiguousarray(X, dtype=np.float32)
        n_rows, n_trees = len(X), len(self.roots)
        node = np.tile(self.roots, n_rows)
        row_start = np.repeat(np.arange(n_rows, dtype=np.int64) * X.shape[1], n_trees)
        flat = X.reshape(-1)
        active = np.flatnonzero(self.left[node] != node)
        categorical = bool((self.category_set >= 0).any())
        for _ in range(self.depth):
            if not len(active):
                break
            at = node[active]
            f = self.feature[at]
            x = flat[row_start[active] + f]
            missing = np.isnan(x)
            go_left = x <= self.threshold[at]
            if categorical:
                sets = self.category_set[at]
                cat = np.flatnonzero(sets >= 0)
                code_f = x[cat]
                valid = (code_f >= 0) & (code_f < 256)  # NaN compares False
                code = np.where(valid, code_f, 0).astype(np.int64)
                word, bit = code >> 5, (code & 31).astype(np.uint32)
                in_left = (self.bitsets[sets[cat], word] >> bit) & 1
                seen = (self.known[f[cat], word] >> bit) & 1
                missing[cat] = ~(valid & seen.astype(bool))
                go_left[cat] = in_left.astype(bool)
            go_left = np.where(missing, self.missing_left[at], go_left)
            nxt = np.where(go_left, self.left[at], self.right[at])
            node[active] = nxt
            active = active[self.left[nxt] != nxt]
        return node.reshape(n_rows, n_trees)

    def predict(self, X: np.ndarray) -> np.ndarray:
        n_out = self.value.shape[1]
        batch = max(1, _BATCH_CELLS // max(1, len(self.roots) * n_out))
        raw = np.empty((len(X), n_out))
        for i in range(0, len(X), batch):
            leaves = self.leaves(X[i : i + batch])
            raw[i : i + batch] = self.value[leaves].sum(axis=1, dtype=np.float64)
        raw = raw * self.scale + self.baseline
        if self.regression:
            return raw[:, 0]
        if self.link == "softmax":
            raw = np.exp(raw - raw.max(axis=1, keepdims=True))
        return raw / raw.sum(axis=1, keepdims=True)

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        meta = {"scale": self.scale, "link": self.link, "depth": self.depth, "regression": self.regression}
        names = ("feature", "threshold", "left", "right", "missing_left", "category_set", "bitsets", "known",
                 "value", "roots", "baseline")
        arrays = {k: getattr(self, k) for k in names}
        arrays["missing_left"] = arrays["missing_left"].astype(np.uint8)
        return meta, arrays

    @classmethod
    def from_arrays(cls, meta: dict, arrays: dict[str, np.ndarray]) -> "TreePart":
        fields = {k: np.asarray(v) for k, v in arrays.items()}
        fields["missing_left"] = fields["missing_left"].astype(bool)
        part = cls(**fields, scale=float(meta["scale"]), link=str(meta["link"]), depth=int(meta["depth"]),
                   regression=bool(meta["regression"]))
        part.check()
        return part

    def check(self) -> None:
        """Raise ValueError unless every index stays inside its array (a file could have been edited)."""
        n = len(self.feature)
        same = [len(a) == n for a in (self.threshold, self.left, self.right, self.missing_left, self.category_set,
                                     self.value)]
        inside = [
            all(same), self.value.ndim == 2, self.baseline.shape == (self.value.shape[1],),
            n == 0 or (0 <= self.left.min() and self.left.max() < n and 0 <= self.right.min() and self.right.max() < n),
            len(self.roots) > 0 and 0 <= self.roots.min() and self.roots.max() < n,
            n == 0 or (self.category_set.min() >= -1 and self.category_set.max() < len(self.bitsets)),
            n == 0 or (self.feature.min() >= 0 and self.feature.max() < len(self.known)),
            self.bitsets.shape[1:] == (8,) and self.known.shape[1:] == (8,), self.link in ("softmax", "identity"),
        ]
        if not all(inside):
            raise ValueError("tree arrays are inconsistent")


def float32_below(threshold: np.ndarray) -> np.ndarray:
    """The largest float32 <= each threshold: for float32 inputs, ``x <= t32`` exactly when ``x <= t``."""
    t32 = threshold.astype(np.float32)
    above = t32.astype(np.float64) > threshold
    t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
    return t32
