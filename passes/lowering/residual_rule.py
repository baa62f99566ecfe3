"""Lower a residual Add of two computed tensors to `IntAdd` on the 22-bit grid calibrated for its sum.

Each branch b ≈ sign_b·|s_b|·(q_b − z_b) + o_b (per tensor or per channel, `IntValue`) is centred and
sign-flipped in int32, then `IntAdd` rounds each branch to the output grid S with its own dyadic
multiplier |s_b|/S (I-ViT's requant-add); branch offsets (a LayerNorm's β in a post-LN block) are added
as round(o/S) before the clamp to ±(2^21 − 1). Rounding o on its own biases a channel by up to half a
step, which on the 22-bit grid is 2^−22 of the range (unlike the 8-bit targets of `requantize_to`, which
round the offset with each element).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.intops.int_linear import IntAdd
from qcompile.passes.lowering.int_value import IntValue, container, signed_multiplier
from qcompile.passes.lowering.ranges import RESIDUAL_GRID, is_residual_add
from qcompile.passes.lowering.rule_base import LoweringRule, MatchResult, failed, matched, output_on_calibrated_grid

__all__ = ["lower_residual_add", "ResidualAddIntoIntAdd"]


def _branch(emit, x: IntValue, scale: float, name: str) -> tuple[ir.Value, ir.Value, ir.Value, np.ndarray]:
    """(centred signed int32 q, m, e, offset codes) of one branch for the output grid `scale`."""
    q, m, e = signed_multiplier(emit, x, scale, name)
    offset = np.zeros(()) if x.offset is None else np.rint(np.asarray(x.offset, np.float64) / scale)
    return q, emit.const(f"{name}_m", m), emit.const(f"{name}_e", e), offset.astype(np.int64)


def lower_residual_add(emit, a: IntValue, b: IntValue, scale: float, name: str) -> IntValue:
    qa, ma, ea, oa = _branch(emit, a, scale, f"{name}_a")
    qb, mb, eb, ob = _branch(emit, b, scale, f"{name}_b")
    offset = oa + ob
    if np.any(offset != 0):
        wide = [emit.const(f"{name}_wide_lo", np.int64(-(2**63))), emit.const(f"{name}_wide_hi", np.int64(2**63 - 1))]
        total = emit.kernel(IntAdd, [qa, qb, ma, ea, mb, eb, *wide], f"{name}_sum")
        total = emit.node(
            "Add", [total, emit.const(f"{name}_offset", offset)], f"{name}_offset_added", ir.DataType.INT64
        )
        bounds = [emit.const(f"{name}_lo", np.int64(-RESIDUAL_GRID)), emit.const(f"{name}_hi", np.int64(RESIDUAL_GRID))]
        total = emit.node("Clip", [total, *bounds], f"{name}_clipped", ir.DataType.INT64)
    else:
        bounds = [emit.const(f"{name}_lo", np.int64(-RESIDUAL_GRID)), emit.const(f"{name}_hi", np.int64(RESIDUAL_GRID))]
        total = emit.kernel(IntAdd, [qa, qb, ma, ea, mb, eb, *bounds], f"{name}_sum")
    out = emit.cast(total, container(-RESIDUAL_GRID, RESIDUAL_GRID), name)
    return IntValue(out, np.float64(scale), 0, -RESIDUAL_GRID, RESIDUAL_GRID)


class ResidualAddIntoIntAdd(LoweringRule):
    """Add of two computed float tensors → `IntAdd` on the sum's calibrated 22-bit grid."""

    op_types = ("Add",)

    def match(self, ctx, node: ir.Node) -> MatchResult:
        if not is_residual_add(node):
            return failed("an operand is a constant (a bias or offset, not a residual)")
        return matched()

    def check(self, ctx, node: ir.Node) -> MatchResult:
        return output_on_calibrated_grid(ctx, node)

    def rewrite(self, ctx, node: ir.Node) -> None:
        name = node.name or node.outputs[0].name
        a, b = ctx.integer(node.inputs[0]), ctx.integer(node.inputs[1])
        ctx.ints[id(node.outputs[0])] = lower_residual_add(ctx.emit, a, b, ctx.scales[node.outputs[0].name], name)
