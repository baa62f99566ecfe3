"""Integer forms of the ops around pooling and normalization of embeddings (masked mean pooling and
L2 normalization, as sentence-transformer exports write them). Inputs are plain `IntValue`s
(v = q·s, per tensor); a value that is not plain is first requantized to its calibrated int16 grid.

    Mul(a, b)            → q_a·q_b (int64),                       scale s_a·s_b
    ReduceSum(a, axes)   → Σ q_a (int64),                          scale s_a
    Clip(a, lo, hi)      → clamp(q_a, ⌈lo/s⌉, ⌊hi/s⌋),              scale s_a        (s_a > 0)
    Div(a, b)            → ⌊(2·q_a·2^k + q_b) / (2·q_b)⌋,           scale s_a/(s_b·2^k)  (q_b ≥ 1)
    ReduceL2(a, axes)    → IntSqrt(Σ q_a²),                         scale s_a

Div rounds half up (the numerator is shifted by q_b/2 before the floor division, written exactly with
Mod). k is chosen from the calibrated max |a/b| so the quotient has ~2^29 at that max (2× headroom below
the int32 requantization that follows), capped so |q_a|·2^(k+1) fits int64. The divisor must be provably
≥ 1 (a Clip with a positive minimum in front, as both the pooling's token count and the L2 norm have).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from qcompile.intops.isqrt import IntSqrt
from qcompile.ir import const_array
from qcompile.passes.lowering.int_value import IntValue
from qcompile.passes.lowering.ranges import is_two_computed
from qcompile.passes.lowering.rule_base import LoweringRule, MatchResult, failed, matched

__all__ = [
    "MAX_DYNAMIC_LENGTH",
    "lower_product",
    "lower_reduce_sum",
    "lower_clip",
    "lower_divide",
    "lower_reduce_l2",
    "reduced_count",
    "ProductIntoIntMul",
    "QuotientIntoIntDiv",
    "ReduceSumIntoIntSum",
    "ReduceL2IntoIntSqrt",
    "ClipIntoIntClip",
]

MAX_DYNAMIC_LENGTH = 2**16  # overflow bounds assume at most this many values along a dynamic axis

INT64 = ir.DataType.INT64


def _wide(emit, x: IntValue, name: str) -> ir.Value:
    return emit.cast(x.value, INT64, f"{name}_i64")


def reduced_count(node: ir.Node, dynamic: int) -> int:
    """How many values each output of a reduction sums (`dynamic` for an unknown axis length)."""
    shape = node.inputs[0].shape
    axes = const_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if shape is None:
        return dynamic
    dims = list(shape)
    picked = range(len(dims)) if axes is None else [int(a) % len(dims) for a in np.asarray(axes).reshape(-1)]
    count = 1
    for axis in picked:
        count *= dims[axis] if isinstance(dims[axis], int) else dynamic
    return count


def lower_product(emit, a: IntValue, b: IntValue, name: str) -> IntValue:
    out = emit.node("Mul", [_wide(emit, a, f"{name}_a"), _wide(emit, b, f"{name}_b")], f"{name}_product", INT64)
    corners = [a.lo * b.lo, a.lo * b.hi, a.hi * b.lo, a.hi * b.hi]
    return IntValue(out, np.float64(float(a.scale) * float(b.scale)), 0, min(corners), max(corners))


def lower_reduce_sum(emit, node: ir.Node, a: IntValue, count: int, name: str) -> IntValue:
    attributes = {key: attr.value for key, attr in node.attributes.items()}
    out = emit.node("ReduceSum", [_wide(emit, a, name), *node.inputs[1:]], f"{name}_sum", INT64, **attributes)
    return IntValue(out, a.scale, 0, min(0, a.lo * count), max(0, a.hi * count))


def lower_clip(emit, node: ir.Node, a: IntValue, name: str) -> IntValue:
    low = const_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    high = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    scale = float(a.scale)
    lo = a.lo if low is None else max(a.lo, math.ceil(float(low) / scale))
    hi = a.hi if high is None else min(a.hi, math.floor(float(high) / scale))
    bounds = [emit.const(f"{name}_lo", np.int64(lo)), emit.const(f"{name}_hi", np.int64(hi))]
    out = emit.node("Clip", [_wide(emit, a, name), *bounds], f"{name}_clip", INT64)
    return IntValue(out, a.scale, 0, lo, hi)


def lower_divide(emit, a: IntValue, b: IntValue, name: str, out_max: float | None = None) -> IntValue:
    """a / b; `out_max` (the calibrated max |a/b|) sets k so the quotient keeps ~30 bits with 2× headroom,
    else k comes from the worst-case bounds."""
    if b.lo < 1:
        raise ValueError(f"divisor of '{name}' is not provably ≥ 1 (clip it first)")
    ratio = float(a.scale) / float(b.scale)
    a_top = max(abs(a.lo), abs(a.hi))
    if out_max is not None and out_max > 0:
        k = int(math.floor(math.log2(2**29 * ratio / out_max)))
    else:
        k = 30 - int(math.ceil(math.log2(max(a_top / b.lo, 1.0))))
    k = max(0, min(k, 61 - int(math.ceil(math.log2(a_top + 1)))))  # |q_a|·2^(k+1) stays below 2^63
    qa, qb = _wide(emit, a, f"{name}_a"), _wide(emit, b, f"{name}_b")
    numerator = emit.node(
        "Add",
        [emit.node("Mul", [qa, emit.const(f"{name}_2k", np.int64(2 ** (k + 1)))], f"{name}_scaled", INT64), qb],
        f"{name}_num",
        INT64,
    )
    divisor = emit.node("Mul", [qb, emit.const(f"{name}_two", np.int64(2))], f"{name}_den", INT64)
    exact = emit.node(
        "Sub", [numerator, emit.node("Mod", [numerator, divisor], f"{name}_rem", INT64)], f"{name}_exact", INT64
    )
    out = emit.node("Div", [exact, divisor], f"{name}_quotient", INT64)
    scale = ratio / 2**k
    bound = int(math.ceil(2 * out_max / scale)) if out_max else int(math.ceil(a_top / b.lo * 2**k)) + 1
    return IntValue(out, np.float64(scale), 0, -bound, bound)


def lower_reduce_l2(emit, node: ir.Node, a: IntValue, count: int, name: str) -> IntValue:
    q = _wide(emit, a, name)
    squares = emit.node("Mul", [q, q], f"{name}_squares", INT64)
    attributes = {key: attr.value for key, attr in node.attributes.items()}
    total = emit.node("ReduceSum", [squares, *node.inputs[1:]], f"{name}_sum_squares", INT64, **attributes)
    root = emit.kernel(IntSqrt, [total], f"{name}_norm")
    top = max(abs(a.lo), abs(a.hi))
    return IntValue(root, a.scale, 0, 0, int(math.isqrt(count * top * top)) + 1)


def _name(node: ir.Node) -> str:
    return node.name or node.outputs[0].name


class ProductIntoIntMul(LoweringRule):
    """Mul of two computed tensors (pooling's hidden × mask) → q_a·q_b in int64."""

    op_types = ("Mul",)

    def match(self, ctx, node: ir.Node) -> MatchResult:
        return matched() if is_two_computed(node) else failed("an operand is a constant (scale bookkeeping)")

    def rewrite(self, ctx, node: ir.Node) -> None:
        name = _name(node)
        a, b = ctx.on_grid(node.inputs[0], f"{name}_a"), ctx.on_grid(node.inputs[1], f"{name}_b")
        ctx.ints[id(node.outputs[0])] = lower_product(ctx.emit, a, b, name)


class QuotientIntoIntDiv(LoweringRule):
    """Div of two computed tensors (pooling's sum / count, L2 normalization) → rounded integer division."""

    op_types = ("Div",)

    def match(self, ctx, node: ir.Node) -> MatchResult:
        return matched() if is_two_computed(node) else failed("an operand is a constant (scale bookkeeping)")

    def rewrite(self, ctx, node: ir.Node) -> None:
        name = _name(node)
        a, b = ctx.on_grid(node.inputs[0], f"{name}_a"), ctx.on_grid(node.inputs[1], f"{name}_b")
        bounds = ctx.scales.bounds.get(node.outputs[0].name)
        out_max = None if bounds is None else max(abs(bounds[0]), abs(bounds[1]))
        ctx.ints[id(node.outputs[0])] = lower_divide(ctx.emit, a, b, name, out_max)


class ReduceSumIntoIntSum(LoweringRule):
    """ReduceSum → Σ q in int64 at the input's scale."""

    op_types = ("ReduceSum",)

    def match(self, ctx, node: ir.Node) -> MatchResult:
        return matched()

    def rewrite(self, ctx, node: ir.Node) -> None:
        name = _name(node)
        count = reduced_count(node, MAX_DYNAMIC_LENGTH)
        ctx.ints[id(node.outputs[0])] = lower_reduce_sum(ctx.emit, node, ctx.on_grid(node.inputs[0], name), count, name)


class ReduceL2IntoIntSqrt(LoweringRule):
    """ReduceL2 → IntSqrt(Σ q²) at the input's scale."""

    op_types = ("ReduceL2",)

    def match(self, ctx, node: ir.Node) -> MatchResult:
        return matched()

    def rewrite(self, ctx, node: ir.Node) -> None:
        name = _name(node)
        count = reduced_count(node, MAX_DYNAMIC_LENGTH)
        ctx.ints[id(node.outputs[0])] = lower_reduce_l2(ctx.emit, node, ctx.on_grid(node.inputs[0], name), count, name)


class ClipIntoIntClip(LoweringRule):
    """Clip of a float tensor → clamp of its codes at bounds rounded inward."""

    op_types = ("Clip",)

    def match(self, ctx, node: ir.Node) -> MatchResult:
        if node.inputs[0] is None or node.inputs[0].dtype != ir.DataType.FLOAT:
            return failed("input is not float32")
        return matched()

    def rewrite(self, ctx, node: ir.Node) -> None:
        name = _name(node)
        ctx.ints[id(node.outputs[0])] = lower_clip(ctx.emit, node, ctx.on_grid(node.inputs[0], name), name)
