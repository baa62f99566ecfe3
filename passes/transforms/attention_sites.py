"""Attention score sites S = Q·Kᵀ as exporters write them, traced back to the query and key projections.

A **site** is a MatMul with two computed inputs whose output reaches a `Softmax` over its last axis through
single-use scalar `Mul`/`Div` and `Add` (an attention mask). Each input is traced upwards, one use at
a time, through scalar `Mul`/`Div`, `Transpose` and one head-splitting `Reshape` ([…, C] → […, H, D]) to
a projection `MatMul(x, W[K, C])` (uses by `Shape` nodes, which read only the shape, are allowed) with an optional
constant bias `Add(b[C])`. The walk tracks which
axis is contracted by the score MatMul (the last axis of Q, the second-to-last of Kᵀ) and requires it
to be the head axis D of the split, so channel c = h·D + d of the projection output is coordinate d of
head h on both sides. Reshape shapes are read from ONNX shape inference with data propagation (exporters
compute them at run time with Shape/Gather/Concat), so a split whose sizes are not static is refused.

Why the structure matters (used by `rotate`'s `qk` and `key_bias` options):
* for any orthogonal R [D, D], (Q_h R)(K_h R)ᵀ = Q_h K_hᵀ, so R can be folded into the columns of both
  projections (W ← W (I_H ⊗ R), b ← b (I_H ⊗ R)) without an online op;
* the key bias adds q·b_k to every score of a query row: a constant along the softmax axis, which
  softmax ignores, so b_k can be dropped (masks add per-element terms and do not change this).
"""

from __future__ import annotations

import dataclasses

import onnx
import onnx_ir as ir

from qcompile.ir import const_array

__all__ = ["Projection", "QKSite", "find_qk_sites", "static_shapes"]

Dim = int | str | None


@dataclasses.dataclass
class Projection:
    """`output = MatMul(x, weight) [+ bias]`; `add` is the bias Add node, if any."""

    matmul: ir.Node
    weight: ir.Value
    bias: ir.Value | None
    add: ir.Node | None


@dataclasses.dataclass
class QKSite:
    scores: ir.Node
    query: Projection
    key: Projection
    heads: int
    head_dim: int
    softmax: ir.Node


def static_shapes(model: ir.Model) -> dict[str, tuple[Dim, ...]]:
    """Value name → shape from ONNX shape inference with data propagation (ints, symbols or None)."""
    inferred = onnx.shape_inference.infer_shapes(ir.serde.serialize_model(model), data_prop=True)
    shapes: dict[str, tuple[Dim, ...]] = {}
    for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        tensor_type = info.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        dims = []
        for dim in tensor_type.shape.dim:
            dims.append(dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None))
        shapes[info.name] = tuple(dims)
    return shapes


def _scalar_constant(value: ir.Value | None) -> bool:
    """An initializer or `Constant` node output holding one element."""
    array = const_array(value)
    return array is not None and array.size == 1


def _scalar_operand(node: ir.Node) -> ir.Value | None:
    """For a Mul (either order) or Div (divisor scalar) by a constant scalar: the computed operand."""
    if node.op_type == "Mul":
        for keep, other in ((0, 1), (1, 0)):
            if _scalar_constant(node.inputs[other]) and not _scalar_constant(node.inputs[keep]):
                return node.inputs[keep]
    if node.op_type == "Div" and _scalar_constant(node.inputs[1]):
        return node.inputs[0]
    return None


def _data_uses(value: ir.Value) -> int:
    """Consumers that read the values (a `Shape` node reads only the shape, which no rewrite changes)."""
    return sum(1 for use in value.uses() if use.node.op_type != "Shape")


def _same_dims(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> bool:
    return len(a) == len(b) and all(x is not None and x == y for x, y in zip(a, b))


def _projection(node: ir.Node, value: ir.Value, channels: int | None) -> Projection | str:
    """The projection ending at `node` (an Add of a constant bias, or the MatMul itself)."""
    add, bias = None, None
    if node.op_type == "Add":
        consts = [v for v in node.inputs if v is not None and v.const_value is not None]
        if len(consts) != 1 or len(consts[0].const_value.shape) != 1:
            return f"'{node.name}' is not a constant bias Add"
        add, bias = node, consts[0]
        value = next(v for v in node.inputs if v is not bias)
        if _data_uses(value) != 1:
            return f"'{value.name}' has other consumers"
        node = value.producer()
        if node is None or node.op_type != "MatMul":
            return f"the bias Add '{add.name}' does not follow a MatMul"
    weight = node.inputs[1]
    if weight is None or weight.const_value is None or len(weight.const_value.shape) != 2:
        return f"'{node.name}' has no constant 2-D weight"
    out_channels = weight.const_value.shape[1]
    if channels is not None and out_channels != channels:
        return f"'{node.name}' has {out_channels} output channels, the head split {channels}"
    if bias is not None and bias.const_value.shape != (out_channels,):
        return f"bias '{bias.name}' does not have {out_channels} channels"
    for shared in (weight, bias):
        if shared is not None and len(shared.uses()) != 1:
            return f"'{shared.name}' is shared"
    return Projection(node, weight, bias, add)


def _trace(value: ir.Value, axis: int, shapes: dict[str, tuple[Dim, ...]]) -> tuple[Projection, int, int] | str:
    """Walk from a score input to its projection; `axis` is the contracted axis (non-negative)."""
    split: tuple[int, int] | None = None
    while True:
        node = value.producer()
        if node is None:
            return f"'{value.name}' is not computed by a projection"
        if _data_uses(value) != 1:
            return f"'{value.name}' has other consumers"
        rank = len(shapes.get(value.name, ()))
        if node.op_type in ("Add", "MatMul"):
            if rank and axis != rank - 1:
                return f"the contracted axis of '{value.name}' is not its channel axis"
            channels = split[0] * split[1] if split else None
            found = _projection(node, value, channels)
            if isinstance(found, str):
                return found
            if split is None:
                channels = found.weight.const_value.shape[1]
                split = (1, channels)
            return found, split[0], split[1]
        if node.op_type == "Transpose":
            perm = node.attributes.get_ints("perm", None)
            if perm is None or axis >= len(perm):
                return f"'{node.name}' has no usable perm"
            axis, value = perm[axis], node.inputs[0]
        elif node.op_type in ("Mul", "Div") and (operand := _scalar_operand(node)) is not None:
            value = operand
        elif node.op_type == "Reshape" and split is None:
            source, target = shapes.get(node.inputs[0].name), shapes.get(value.name)
            if source is None or target is None or len(target) != len(source) + 1 or axis != len(target) - 1:
                return f"'{node.name}' is not a static head split of the last axis"
            heads, head_dim, channels = target[-2], target[-1], source[-1]
            if not all(isinstance(d, int) for d in (heads, head_dim, channels)) or heads * head_dim != channels:
                return f"'{node.name}' does not split {channels} channels into static heads"
            if not _same_dims(source[:-1], target[:-2]):
                return f"'{node.name}' changes the leading dimensions"
            split, axis, value = (heads, head_dim), len(source) - 1, node.inputs[0]
        else:
            return f"'{node.op_type}' node '{node.name}' sits between the projection and the scores"


def _softmax_over_keys(scores: ir.Node, shapes: dict[str, tuple[Dim, ...]]) -> ir.Node | str:
    value = scores.outputs[0]
    rank = len(shapes.get(value.name, ()))
    while True:
        uses = list(value.uses())
        if len(uses) != 1:
            return "the scores have other consumers"
        node = uses[0].node
        if node.op_type == "Softmax":
            axis = node.attributes.get_int("axis", -1)
            if rank == 0 or axis % rank != rank - 1:
                return f"'{node.name}' is not over the key axis"
            return node
        if node.op_type in ("Mul", "Div") and _scalar_operand(node) is value:
            value = node.outputs[0]
        elif node.op_type == "Add":
            value = node.outputs[0]
        else:
            return "the scores do not reach a Softmax"


def find_qk_sites(model: ir.Model) -> tuple[list[QKSite], dict[str, str]]:
    """Every attention score site, and {score MatMul: reason} for MatMuls of two computed inputs that
    feed a Softmax but could not be traced."""
    shapes = static_shapes(model)
    sites, skipped = [], {}
    for node in model.graph:
        if node.op_type != "MatMul" or any(v is None or v.const_value is not None for v in node.inputs[:2]):
            continue
        softmax = _softmax_over_keys(node, shapes)
        if isinstance(softmax, str):
            continue  # not an attention score MatMul (P·V, or scores feeding something else)
        rank = len(shapes.get(node.inputs[0].name, ()))
        if rank < 2 or len(shapes.get(node.inputs[1].name, ())) != rank:
            skipped[node.name] = "score inputs without a static rank"
            continue
        query = _trace(node.inputs[0], rank - 1, shapes)
        key = _trace(node.inputs[1], rank - 2, shapes)
        reason = query if isinstance(query, str) else key if isinstance(key, str) else None
        if reason is None and query[1:] != key[1:]:
            reason = f"query heads {query[1:]} differ from key heads {key[1:]}"
        if reason is not None:
            skipped[node.name] = reason
            continue
        sites.append(QKSite(node, query[0], key[0], query[1], query[2], softmax))
    return sites, skipped
