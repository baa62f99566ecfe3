"""Nodes that are already integer, and float constants.

A node whose outputs are all integer or boolean (shape arithmetic, position ids, the comparisons and
gathers that build an attention mask from the integer mask input) computes nothing the lowering has to
change: an integer function of integer inputs is exact in any backend. It is kept as it is, in order,
with one exception for its inputs: a `Shape` may read a float tensor, and then reads the integer tensor
that replaces it (same shape). Any other integer node reading a float tensor (a comparison of
activations) is a float computation and is refused.

A float `Constant` node emits nothing: rules read constants as scales, offsets or int16 tables.
"""

from __future__ import annotations

import onnx_ir as ir

from qcompile.passes.lowering.rule_base import LoweringRule, MatchResult, failed, matched

__all__ = ["FLOAT_TYPES", "is_float", "IntegerNodeKept", "FloatConstantRead"]

FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def is_float(value: ir.Value | None) -> bool:
    """A float tensor, or one whose dtype is unknown (counted as float: it must be proven integer)."""
    return value is not None and (value.dtype is None or value.dtype in FLOAT_TYPES)


class FloatConstantRead(LoweringRule):
    """A float `Constant` node → nothing (its value is read by the rules that use it)."""

    op_types = ("Constant",)

    def match(self, ctx, node: ir.Node) -> MatchResult:
        return matched() if node.outputs[0].dtype in FLOAT_TYPES else failed("not a float constant")

    def rewrite(self, ctx, node: ir.Node) -> None:
        return None


class IntegerNodeKept(LoweringRule):
    """A node with only integer/boolean outputs → kept (a float input of a `Shape` read as its codes)."""

    def match(self, ctx, node: ir.Node) -> MatchResult:
        if any(is_float(v) for v in node.outputs):
            return failed("computes a float tensor")
        return matched()

    def check(self, ctx, node: ir.Node) -> MatchResult:
        floats = [v.name for v in node.inputs if v is not None and v.dtype in FLOAT_TYPES]
        if floats and node.op_type != "Shape":
            return failed(f"reads float tensor '{floats[0]}'")
        return matched()

    def rewrite(self, ctx, node: ir.Node) -> None:
        for index, value in enumerate(node.inputs):
            if value is not None and value.dtype in FLOAT_TYPES:
                node.replace_input_with(index, ctx.integer(value).value)
        ctx.emit.nodes.append(node)
