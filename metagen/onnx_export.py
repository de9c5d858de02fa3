"""A whole fitted ensemble as one ONNX model: trees, linear models and networks, blended by weight.

The graph takes the views' matrices, not raw rows. Preprocessing (strings to one-hot,
category codes, quantile interpolation, missing-value indicators) works on strings and
dictionaries of levels that ONNX has no portable operators for, so it stays in Python,
where ``Preprocessor.transform`` already defines it exactly. Get the inputs with::

    views = fitted.transform(df)                       # a FittedModel
    views = predictor.fitted.transform(df)             # a Predictor (metagen.load(path))
    session.run(None, {name: views[name] for name in input_names})

Inputs: one float32 ``[N, width]`` input per view the members read, named after the
view (``ordinal``, ``quantile``, ``robust``). Output: ``probabilities`` ``[N, n_out]``
(class order of ``fitted.classes``, also in the model's metadata) or ``value`` ``[N]`` in
target units, both float64 like ``FittedModel.predict_views``.

Everything after the inputs runs in float64 (the inputs are cast once), so the graph
matches the numpy/torch reference to rounding: float32 inputs and float32 tree
thresholds compare exactly the same in float64. The one exception is the ``erf`` inside
GELU, which onnxruntime implements only in float32 (about 1e-7 relative).

Operators: default domain opset 17, and ``ai.onnx.ml`` opset 5 ``TreeEnsemble``
(``BRANCH_LEQ``, ``BRANCH_MEMBER``, per-node missing direction), which onnxruntime runs
since 1.20 (tested with 1.32).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from metagen.errors import ConfigError, MetaGenError
from metagen.extras import require
from metagen.model import FittedModel
from metagen.serving import LinearPart, NetworkPart, TreePart

OPSET = 17
ML_OPSET = 5
IR_VERSION = 10  # onnx 1.16, the first with ai.onnx.ml opset 5: readable by older runtimes too
_BRANCH_LEQ, _BRANCH_MEMBER = 0, 6
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _onnx() -> Any:
    return require("onnx", "onnx", "ONNX export")


class _Graph:
    """Nodes and constants under unique names: each helper returns the name of its output."""

    def __init__(self, onnx: Any) -> None:
        self.onnx, self.nodes, self.inits, self._n = onnx, [], [], 0

    def _name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, value: Any, dtype: Any = np.float64, hint: str = "c") -> str:
        name = self._name(hint)
        self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, hint: str | None = None, domain: str = "", **attrs: Any) -> str:
        out = self._name(hint or op_type.lower())
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [out], domain=domain, **attrs))
        return out

    def affine(self, x: str, weight: np.ndarray, bias: np.ndarray, hint: str) -> str:
        """``x @ weight.T + bias``, weights stored (in, out) in float64."""
        w = self.const(np.asarray(weight, np.float64).T, hint=f"{hint}_w")
        return self.op("Add", self.op("MatMul", x, w), self.const(bias, hint=f"{hint}_b"), hint=hint)

    def softmax(self, x: str) -> str:
        return self.op("Softmax", x, axis=-1)

    def column0(self, x: str) -> str:
        """A regression part's (N, 1) output as (N,)."""
        return self.op("Reshape", x, self.const([-1], np.int64))

    def normalise(self, x: str) -> str:
        """Rows divided by their sum, as the reference does after averaging probabilities."""
        return self.op("Div", x, self.op("ReduceSum", x, self.const([1], np.int64), keepdims=1))


def _tree_nodes(part: TreePart) -> dict[str, Any]:
    """The TreePart arrays as TreeEnsemble attributes.

    TreeEnsemble leaves feed one target each, so a tree is written once per output
    column its leaves feed (boosting: one; a forest's class fractions: every class).
    Category codes the model never saw arrive as NaN (:func:`_category_codes`).
    """
    n, k = part.value.shape
    ids = np.arange(n)
    is_leaf = (part.left == ids) & (part.right == ids)
    tree = np.full(n, -1)
    tree[part.roots] = np.arange(len(part.roots))
    for _ in range(part.depth + 1):  # label every node with its tree, whatever the node order
        m = tree >= 0
        tree[part.left[m]], tree[part.right[m]] = tree[m], tree[m]
    feeds = np.zeros((len(part.roots), k), dtype=bool)
    reached = tree >= 0
    np.logical_or.at(feeds, tree[reached], part.value[reached] != 0)
    if not feeds.any():
        feeds[0, 0] = True  # every leaf is zero: one tree still makes a valid (all-zero) ensemble
    feature, splits, modes, missing, members = [], [], [], [], []
    t_ids, t_leaf, f_ids, f_leaf, roots, leaf_target, leaf_weight = [], [], [], [], [], [], []
    for t in range(k):
        nodes = np.flatnonzero(reached & feeds[tree.clip(0), t])
        if len(nodes) == 0:
            continue
        inner, leaves = nodes[~is_leaf[nodes]], nodes[is_leaf[nodes]]
        # A one-leaf tree gets a dummy split to its leaf and to a copy of it (the onnx reference evaluator
        # misreads a split whose two sides are the same leaf).
        lone = np.intersect1d(part.roots, leaves)
        base_inner, base_leaf = len(feature), len(leaf_target)
        inner_pos, leaf_pos = np.full(n, -1), np.full(n, -1)
        inner_pos[inner] = base_inner + np.arange(len(inner))
        inner_pos[lone] = base_inner + len(inner) + np.arange(len(lone))
        leaf_pos[leaves] = base_leaf + np.arange(len(leaves))
        cat = part.category_set[inner] >= 0
        feature += part.feature[inner].tolist() + [0] * len(lone)
        splits += np.where(cat, 0.0, part.threshold[inner].astype(np.float64)).tolist() + [0.0] * len(lone)
        modes += np.where(cat, _BRANCH_MEMBER, _BRANCH_LEQ).tolist() + [_BRANCH_LEQ] * len(lone)
        missing += part.missing_left[inner].astype(int).tolist() + [0] * len(lone)
        for node in inner[cat]:
            members.append(_left_codes(part, node))
        for children, ids_out, leaf_out in ((part.left, t_ids, t_leaf), (part.right, f_ids, f_leaf)):
            child = children[inner]
            ids_out += np.where(is_leaf[child], leaf_pos[child], inner_pos[child]).tolist()
            leaf_out += is_leaf[child].astype(int).tolist() + [1] * len(lone)
        t_ids += leaf_pos[lone].tolist()
        f_ids += (base_leaf + len(leaves) + np.arange(len(lone))).tolist()
        roots += inner_pos[part.roots[feeds[:, t]]].tolist()
        leaf_target += [t] * (len(leaves) + len(lone))
        leaf_weight += part.value[np.concatenate([leaves, lone]), t].astype(np.float64).tolist()
    onnx = _onnx()
    double, uint8 = onnx.TensorProto.DOUBLE, onnx.TensorProto.UINT8
    attrs = dict(
        n_targets=k, aggregate_function=1, post_transform=0, tree_roots=roots, nodes_featureids=feature,
        nodes_splits=onnx.helper.make_tensor("splits", double, [len(splits)], splits),
        nodes_modes=onnx.helper.make_tensor("modes", uint8, [len(modes)], modes),
        nodes_truenodeids=t_ids, nodes_trueleafs=t_leaf, nodes_falsenodeids=f_ids, nodes_falseleafs=f_leaf,
        nodes_missing_value_tracks_true=missing, leaf_targetids=leaf_target,
        leaf_weights=onnx.helper.make_tensor("leaf_weights", double, [len(leaf_weight)], leaf_weight),
    )
    if members:
        values = np.concatenate([np.append(codes, np.nan) for codes in members])
        attrs["membership_values"] = onnx.helper.make_tensor("members", double, [len(values)], values.tolist())
    return attrs


def _bits(words: np.ndarray) -> np.ndarray:
    """8 uint32 words as 256 booleans, one per category code."""
    codes = np.arange(256)
    return (words[codes >> 5] >> (codes & 31).astype(np.uint32)) & 1 == 1


def _left_codes(part: TreePart, node: int) -> np.ndarray:
    """The codes BRANCH_MEMBER sends left at a categorical node, plus one (-1, which no code equals, for none)."""
    codes = np.flatnonzero(_bits(part.bitsets[part.category_set[node]] & part.known[part.feature[node]]))
    return codes + 1.0 if len(codes) else np.array([-1.0])


def _category_codes(g: _Graph, part: TreePart, x: str) -> str:
    """The categorical columns as the reference reads them: a code outside 0..255 or never seen in training is NaN.

    Unseen codes then take the missing way in TreeEnsemble, so the category sets list only
    the (few) codes that go left: listing every unseen code instead would make sets of up
    to 256 values per split, and long membership lists exhaust onnxruntime's memory
    (onnxruntime issue 25400). Codes are shifted to 1..256 because the onnx reference
    evaluator ends a set at a member equal to 0.
    """
    split_on = np.unique(part.feature[part.category_set >= 0])
    if len(split_on) == 0:
        return x
    mask = np.zeros(len(part.known), dtype=bool)
    mask[split_on] = True
    seen_table = np.concatenate([_bits(words) for words in part.known])  # column * 256 + code
    valid = g.op("And", g.op("GreaterOrEqual", x, g.const(0.0)), g.op("Less", x, g.const(256.0)))
    code = g.op("Floor", g.op("Where", valid, x, g.const(0.0)))
    index = g.op("Add", g.op("Cast", code, to=_onnx().TensorProto.INT64),
                 g.const(np.arange(len(part.known)) * 256, np.int64))
    seen = g.op("And", valid, g.op("Gather", g.const(seen_table, np.bool_, "seen"), index))
    codes = g.op("Where", seen, g.op("Add", code, g.const(1.0)), g.const(np.nan))
    return g.op("Where", g.const(mask, np.bool_, "categorical"), codes, x, hint="codes")


def _tree_part(g: _Graph, part: TreePart, x: str) -> str:
    """Sum of leaf values per output (TreeEnsemble), then scale, baseline and link with standard ops."""
    raw = g.op("TreeEnsemble", _category_codes(g, part, x), domain="ai.onnx.ml", hint="trees", **_tree_nodes(part))
    raw = g.op("Add", g.op("Mul", raw, g.const(part.scale)), g.const(part.baseline))
    if part.regression:
        return g.column0(raw)
    return g.softmax(raw) if part.link == "softmax" else g.normalise(raw)


def _linear_part(g: _Graph, part: LinearPart, x: str) -> str:
    raw = g.affine(x, part.weight, part.bias, "linear")
    return g.column0(raw) if part.regression else g.softmax(raw)


def _activation(g: _Graph, name: str, h: str, prelu: np.ndarray | None) -> str:
    """metagen.network's activations, each in float64 (onnxruntime has no float64 Selu or Erf kernel)."""
    if name == "relu":
        return g.op("Relu", h)
    if name == "silu":
        return g.op("Mul", h, g.op("Sigmoid", h))
    if name == "selu":  # scale * (max(0, x) + alpha * (exp(min(0, x)) - 1))
        neg = g.op("Sub", g.op("Exp", g.op("Min", h, g.const(0.0))), g.const(1.0))
        return g.op("Mul", g.op("Add", g.op("Relu", h), g.op("Mul", neg, g.const(_SELU_ALPHA))), g.const(_SELU_SCALE))
    if name == "gelu":  # torch's exact GELU: x/2 * (1 + erf(x / sqrt 2)), erf in float32
        f32, f64 = _onnx().TensorProto.FLOAT, _onnx().TensorProto.DOUBLE
        erf = g.op("Cast", g.op("Erf", g.op("Cast", g.op("Mul", h, g.const(math.sqrt(0.5))), to=f32)), to=f64)
        return g.op("Mul", g.op("Mul", h, g.const(0.5)), g.op("Add", erf, g.const(1.0)))
    return g.op("PRelu", h, g.const(prelu, hint="prelu"))


def _layer_norm(g: _Graph, h: str, weight: np.ndarray, bias: np.ndarray) -> str:
    """torch's LayerNorm (eps 1e-5, biased variance), written out so the statistics stay in float64."""
    centred = g.op("Sub", h, g.op("ReduceMean", h, axes=[-1], keepdims=1))
    var = g.op("ReduceMean", g.op("Mul", centred, centred), axes=[-1], keepdims=1)
    normed = g.op("Div", centred, g.op("Sqrt", g.op("Add", var, g.const(1e-5))))
    return g.op("Add", g.op("Mul", normed, g.const(weight, hint="ln_w")), g.const(bias, hint="ln_b"))


def _network_part(g: _Graph, part: NetworkPart, x: str) -> str:
    """The MLP's forward pass from its weights: optional input scale, blocks, head (dropout is off at inference)."""
    s, config = part.state, part.config
    h = g.op("Mul", x, g.const(s["scale"], hint="scale")) if config.scale_layer else x
    for i in range(config.depth):
        p = f"blocks.{i}."
        z = g.affine(h, s[p + "linear.weight"], s[p + "linear.bias"], f"block{i}")
        if config.norm == "layer":
            z = _layer_norm(g, z, s[p + "norm.weight"], s[p + "norm.bias"])
        z = _activation(g, config.activation, z, s.get(p + "act.weight"))
        h = g.op("Add", h, z) if config.residual and i > 0 else z
    raw = g.affine(h, s["head.weight"], s["head.bias"], "head")
    return g.column0(raw) if part.regression else g.softmax(raw)


_PARTS = {TreePart: _tree_part, LinearPart: _linear_part, NetworkPart: _network_part}


def input_widths(fitted: FittedModel) -> dict[str, int]:
    """The graph's inputs: each view some member reads, and its number of columns."""
    return {name: view.n_features_out for name, view in fitted.views.items()
            if any(m.view == name for m in fitted.members)}


def export_onnx(fitted: FittedModel, path: str | Path) -> Path:
    """Write the ensemble as one ONNX model at ``path``; see the module docstring for its inputs and output."""
    onnx = _onnx()
    g = _Graph(onnx)
    widths = input_widths(fitted)
    inputs = {name: g.op("Cast", name, to=onnx.TensorProto.DOUBLE, hint=f"{name}_f64") for name in widths}
    blended = []
    for member in fitted.members:
        parts = []
        for part in member.parts:
            export = _PARTS.get(type(part))
            if export is None:
                raise ConfigError(f"ONNX export does not know parts of kind {part.kind!r}.")
            parts.append(export(g, part, inputs[member.view]))
        mean = g.op("Div", g.op("Sum", *parts), g.const(float(len(parts))), hint="member")
        blended.append(g.op("Mul", mean, g.const(member.weight)))
    out = g.op("Sum", *blended, hint="ensemble")
    regression = fitted.task == "regression"
    if regression:
        result = g.op("Add", g.op("Mul", out, g.const(fitted.y_std)), g.const(fitted.y_mean))
    else:
        result = g.normalise(out)
    output = "value" if regression else "probabilities"
    g.nodes.append(onnx.helper.make_node("Identity", [result], [output]))
    double, float32 = onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        g.nodes, "metagen_ensemble",
        [onnx.helper.make_tensor_value_info(name, float32, ["N", width]) for name, width in widths.items()],
        [onnx.helper.make_tensor_value_info(output, double, ["N"] if regression else ["N", fitted.n_out])],
        g.inits,
    )
    model = onnx.helper.make_model(
        graph, producer_name="metagen", ir_version=IR_VERSION,
        opset_imports=[onnx.helper.make_opsetid("", OPSET), onnx.helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
    )
    meta = {"task": fitted.task, "target": fitted.target, "classes": json.dumps(fitted.classes, default=str)}
    onnx.helper.set_model_props(model, {f"metagen.{k}": str(v) for k, v in meta.items()})
    onnx.checker.check_model(model)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(model.SerializeToString())
    except OSError as exc:
        raise MetaGenError(f"Cannot write {path}: {exc.strerror or exc}.", "Pick a writable path.") from exc
    return path
