"""A float select between two constants on an integer or boolean condition (an attention mask built with
`torch.where(allowed, 0, finfo.min)`): an affine function of the condition's codes.

With c ∈ {0, 1} the condition (Bool, or an integer 0/1 tensor) and a, b float scalars:

    Where(c, a, b) = b + (a − b)·c    → IntValue(q = c, scale a − b, offset b, [0, 1])

exact in real arithmetic and emitting nothing; the scale may be negative (`requantize_to` turns its sign
into an integer flip). An additive mask written this way is then recognized by `mask_rule` like
(1 − m)·c: 0 at the keep code, below −1000 at the other.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.ir import const_array
from qcompile.passes.lowering.int_value import IntValue
from qcompile.passes.lowering.rule_base import LoweringRule, MatchResult, failed, matched

__all__ = ["SelectIntoScaleOffset"]


def _scalar(value: ir.Value | None) -> float | None:
    array = const_array(value)
    return None if array is None or array.size != 1 or array.dtype.kind != "f" else float(array.reshape(()))


class SelectIntoScaleOffset(LoweringRule):
    """Where(condition, a, b) with constant float scalars a, b → the condition's codes at scale a − b,
    offset b."""

    op_types = ("Where",)

    def match(self, ctx, node: ir.Node) -> MatchResult:
        condition, a, b = node.inputs
        if condition is None or condition.dtype != ir.DataType.BOOL or const_array(condition) is not None:
            return failed("condition is not a computed boolean tensor")
        high, low = _scalar(a), _scalar(b)
        if high is None or low is None:
            return failed("the two branches are not float scalar constants")
        return matched(condition=condition, high=high, low=low)

    def check(self, ctx, node: ir.Node, condition: ir.Value, high: float, low: float) -> MatchResult:
        if not np.isfinite(high - low):
            return failed(f"branch difference {high} − {low} is not finite")
        return matched()

    def rewrite(self, ctx, node: ir.Node, condition: ir.Value, high: float, low: float) -> None:
        scale, offset = np.float64(high) - np.float64(low), np.float64(low)
        ctx.ints[id(node.outputs[0])] = IntValue(condition, scale, 0, 0, 1, offset)
