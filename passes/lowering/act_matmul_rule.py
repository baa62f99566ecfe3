"""Lower MatMul of two activations (attention scores Q·Kᵀ, context P·V) to an integer matmul.

With a ≈ (a_q − z_a)·s_a and b ≈ (b_q − z_b)·s_b (per-tensor):

    a·b ≈ s_a·s_b · (a_q − z_a)·(b_q − z_b)

computed as Cast(int32) − z, then an int32 MatMul (or int64 when K·max|a_q − z_a|·max|b_q − z_b| could
reach 2^31). Each input is read at its activation QuantSpec when it has one (requantized if needed), or
as it is when it is already a plain integer value (softmax output codes, which `quantize` keeps float).
The node records max|a| and max|b| in its metadata (`OPERAND_BOUNDS`), the centred ranges
[lo_a, hi_a] and [lo_b, hi_b] (`OPERAND_RANGES`) and, when a's rows have a known bound on Σ_k |a|
(softmax probabilities sum to at most their top code), that bound (`ROW_SUM_A`), so a backend can
prove that narrower arithmetic is exact (the TVM backend's int16-pair kernels) without re-deriving them.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.ir import const_array, quant_meta
from qcompile.ir.lowering_contract import OPERAND_BOUNDS, OPERAND_RANGES, ROW_SUM_A
from qcompile.passes.lowering.int_value import IntValue
from qcompile.passes.lowering.reduce_rule import MAX_DYNAMIC_LENGTH
from qcompile.passes.lowering.rule_base import LoweringRule, MatchResult, failed, matched

__all__ = ["lower_act_matmul", "ActMatMulIntoIntMatMul"]

INT32_MAX = 2**31 - 1


def _centred(emit, x: IntValue, dtype: ir.DataType, name: str) -> ir.Value:
    q = emit.cast(x.value, dtype, f"{name}_wide")
    if x.zero_point:
        zero = np.asarray(x.zero_point, dtype=dtype.numpy())
        q = emit.node("Sub", [q, emit.const(f"{name}_zp", zero)], f"{name}_centred", dtype)
    return q


def lower_act_matmul(emit, a: IntValue, b: IntValue, depth: int, name: str) -> IntValue:
    """Integer product of plain integer values `a` [..., M, K] and `b` [..., K, N]."""
    bound_a = max(abs(a.lo - a.zero_point), abs(a.hi - a.zero_point))
    bound_b = max(abs(b.lo - b.zero_point), abs(b.hi - b.zero_point))
    bound = depth * bound_a * bound_b
    dtype = ir.DataType.INT32 if bound <= INT32_MAX else ir.DataType.INT64
    product = emit.node(
        "MatMul", [_centred(emit, a, dtype, f"{name}_a"), _centred(emit, b, dtype, f"{name}_b")], f"{name}_acc", dtype
    )
    metadata = product.producer().metadata_props
    metadata[OPERAND_BOUNDS] = f"{bound_a},{bound_b}"
    metadata[OPERAND_RANGES] = (
        f"{a.lo - a.zero_point},{a.hi - a.zero_point},{b.lo - b.zero_point},{b.hi - b.zero_point}"
    )
    if a.row_sum is not None:
        metadata[ROW_SUM_A] = str(a.row_sum)
    return IntValue(product, np.float64(float(a.scale) * float(b.scale)), 0, -bound, bound)


class ActMatMulIntoIntMatMul(LoweringRule):
    """MatMul of two computed tensors (Q·Kᵀ, P·V) → centred int32/int64 MatMul."""

    op_types = ("MatMul",)

    def match(self, ctx, node: ir.Node) -> MatchResult:
        if any(const_array(v) is not None for v in node.inputs):
            return failed("an operand is a constant (a linear without a quantized weight)")
        return matched()

    def check(self, ctx, node: ir.Node) -> MatchResult:
        for value in node.inputs:
            spec = quant_meta.get_quant(value)
            if not (spec is not None and spec.kind == "uniform" and spec.axis is None) and not ctx.integer(value).plain:
                return failed(f"operand '{value.name}' has neither a per-tensor quantizer nor a plain integer form")
        return matched()

    def rewrite(self, ctx, node: ir.Node) -> None:
        name = node.name or node.outputs[0].name
        a, b = ctx.operand(node.inputs[0], f"{name}_a"), ctx.operand(node.inputs[1], f"{name}_b")
        depth = node.inputs[0].shape[-1] if node.inputs[0].shape is not None else None
        depth = depth if isinstance(depth, int) else MAX_DYNAMIC_LENGTH
        ctx.ints[id(node.outputs[0])] = lower_act_matmul(ctx.emit, a, b, depth, name)
