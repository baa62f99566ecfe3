"""Lower the additive attention mask in front of a softmax: Add(scores, m) where m is derived from an
integer input (BERT: m = (1 − mask)·c with c a large negative constant, c = −10000 or the float minimum).

m's IntValue is q·s + o with q the integer mask. If for q = k (the "keep" code, 0 or 1) the real value is
0 and for the other code it is below −`MASKED`, then softmax(scores + m) ignores the masked positions,
and in integers this is

    scores_int + Where(q == k, 0, −2^30)

(int32): the row maximum comes from kept positions and every masked one falls below the softmax's 16-bit
window (`softmax_rule`), where the integer exp is 0. Adding m on a calibrated grid instead would size the
grid for c and leave no resolution for the scores.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.passes.lowering.int_value import IntValue
from qcompile.passes.lowering.ranges import is_residual_add
from qcompile.passes.lowering.rule_base import LoweringRule, MatchResult, failed, matched

__all__ = ["MASKED", "mask_keep_code", "lower_masked_scores", "MaskedScoresIntoWherePenalty"]

MASKED = 1000.0
PENALTY = -(2**30)


def mask_keep_code(mask: IntValue) -> int | None:
    """0 or 1, the integer mask value that keeps a position, if `mask` is an additive mask."""
    if mask.per_channel or mask.zero_point or (mask.offset is not None and np.size(mask.offset) != 1):
        return None
    offset = 0.0 if mask.offset is None else float(np.asarray(mask.offset).reshape(()))
    at_zero, at_one = offset, offset + float(mask.scale)
    if at_zero == 0.0 and at_one < -MASKED:
        return 0
    if at_one == 0.0 and at_zero < -MASKED:
        return 1
    return None


def lower_masked_scores(emit, scores: IntValue, mask: IntValue, keep: int, name: str) -> IntValue:
    q = emit.cast(scores.value, ir.DataType.INT32, f"{name}_scores_i32")
    code = emit.cast(mask.value, ir.DataType.INT32, f"{name}_mask_i32")
    kept = emit.node("Equal", [code, emit.const(f"{name}_keep", np.int32(keep))], f"{name}_kept", ir.DataType.BOOL)
    penalty = emit.node(
        "Where",
        [kept, emit.const(f"{name}_zero", np.int32(0)), emit.const(f"{name}_penalty", np.int32(PENALTY))],
        f"{name}_penalty",
        ir.DataType.INT32,
    )
    masked = emit.node("Add", [q, penalty], f"{name}_masked", ir.DataType.INT32)
    return IntValue(masked, scores.scale, 0, PENALTY + scores.lo, scores.hi)


class MaskedScoresIntoWherePenalty(LoweringRule):
    """Add(scores, additive mask) feeding only a Softmax → scores + Where(q == keep, 0, −2^30)."""

    op_types = ("Add",)

    def match(self, ctx, node: ir.Node) -> MatchResult:
        uses = list(node.outputs[0].uses())
        if not is_residual_add(node) or len(uses) != 1 or uses[0].node.op_type != "Softmax":
            return failed("not an Add of two computed tensors feeding only a Softmax")
        return matched()

    def check(self, ctx, node: ir.Node) -> MatchResult:
        a, b = ctx.integer(node.inputs[0]), ctx.integer(node.inputs[1])
        for scores, mask in ((a, b), (b, a)):
            keep = mask_keep_code(mask)
            if keep is not None and scores.plain:
                return matched(scores=scores, mask=mask, keep=keep)
        return failed("neither operand is an additive mask (0 where kept, below −1000 elsewhere) next to plain scores")

    def rewrite(self, ctx, node: ir.Node, scores: IntValue, mask: IntValue, keep: int) -> None:
        name = node.name or node.outputs[0].name
        ctx.ints[id(node.outputs[0])] = lower_masked_scores(ctx.emit, scores, mask, keep, name)
