"""Data-movement ops on integer values, and scalar rescaling.

Reshape, Transpose, Squeeze, Unsqueeze, Flatten, Identity, Gather, Slice and Expand move elements
without changing them, so q' = op(q) keeps the same per-tensor scale, zero point, offset and range:
the node is re-emitted with the integer tensor as its data input (shape/index inputs are int64 and pass
unchanged). A float constant data input (an embedding table) is first put on a symmetric int16 grid.
A per-channel value (an accumulator at S_x·S_w[n], a LayerNorm output) passes unchanged through ops that
keep the last axis (Identity; Gather along another axis, e.g. the CLS token); before any other it is
requantized to the QuantSpec found at the end of its chain of data-movement ops, since the channel axis
may move.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from qcompile.ir import const_array, quant_meta
from qcompile.passes.lowering.int_value import requantize_to
from qcompile.passes.lowering.rule_base import LoweringRule, MatchResult, failed, matched

__all__ = ["DATA_MOVEMENT", "is_data_movement", "keeps_channels", "downstream_spec", "DataMovementOnCodes"]

DATA_MOVEMENT = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Gather", "Slice", "Expand")


def is_data_movement(node: ir.Node) -> bool:
    """A standard data-movement op whose data input (0) is a float tensor."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in DATA_MOVEMENT or not node.inputs:
        return False
    data = node.inputs[0]
    return data is not None and data.dtype == ir.DataType.FLOAT


def keeps_channels(node: ir.Node) -> bool:
    """The op leaves the last axis (the channel axis of per-channel scales) where and as it is."""
    if node.op_type == "Identity":
        return True
    if node.op_type == "Gather":
        shape = node.inputs[0].shape
        axis = node.attributes.get_int("axis", 0)
        return shape is not None and axis % len(shape) != len(shape) - 1
    return False


def _positive_scalar(node: ir.Node, value: ir.Value) -> float | None:
    """c for Mul(value, c), Mul(c, value) or Div(value, 1/c) with a positive scalar constant c."""
    if node.op_type not in ("Mul", "Div") or len(node.inputs) != 2:
        return None
    other = node.inputs[1] if node.inputs[0] is value else node.inputs[0]
    if node.op_type == "Div" and node.inputs[0] is not value:
        return None
    array = const_array(other)
    if array is None or array.size != 1 or float(array.reshape(())) <= 0:
        return None
    c = float(array.reshape(()))
    return c if node.op_type == "Mul" else 1.0 / c


def downstream_spec(value: ir.Value) -> tuple[quant_meta.QuantSpec, float] | None:
    """The uniform per-tensor QuantSpec at the end of `value`'s single-use chain of data-movement ops and
    positive scalar multiplies (DINOv2 scales q and k by d^−1/4 after the head split), with the product c
    of those multipliers: `value` belongs on the grid spec.scale / c. Uses by Shape nodes do not count
    (they read the shape, not the data)."""
    factor = 1.0
    while True:
        spec = quant_meta.get_quant(value)
        if spec is not None:
            return (spec, factor) if spec.kind == "uniform" and spec.axis is None else None
        uses = [u for u in value.uses() if u.node.op_type != "Shape"]  # exporters read shapes to build Reshape targets
        if len(uses) != 1:
            return None
        node = uses[0].node
        c = _positive_scalar(node, value)
        if c is not None:
            factor *= c
        elif uses[0].idx != 0 or not is_data_movement(node):
            return None
        value = node.outputs[0]


class DataMovementOnCodes(LoweringRule):
    """A data-movement op on a float tensor → the same op on its codes (per-channel values requantized to
    the QuantSpec downstream first, unless the op keeps the channel axis)."""

    op_types = DATA_MOVEMENT

    def match(self, ctx, node: ir.Node) -> MatchResult:
        return matched() if is_data_movement(node) else failed("data input is not float32")

    def check(self, ctx, node: ir.Node) -> MatchResult:
        source = ctx.integer(node.inputs[0])
        if source.movable or keeps_channels(node):
            return matched(source=source, target=None)
        found = downstream_spec(node.inputs[0])
        if found is None:
            return failed(f"per-channel '{node.inputs[0].name}' has no per-tensor quantizer downstream to move on")
        return matched(source=source, target=found)

    def rewrite(self, ctx, node: ir.Node, source, target) -> None:
        name = node.name or node.outputs[0].name
        if target is not None:
            spec, factor = target
            scale = float(spec.scale) / factor
            source = requantize_to(ctx.emit, source, scale, int(spec.zero_point), spec.qmin, spec.qmax, f"{name}_in")
        attributes = {key: attr.value for key, attr in node.attributes.items()}
        out = ctx.emit.node(
            node.op_type,
            [source.value, *node.inputs[1:]],
            f"{node.outputs[0].name}_q",
            source.value.dtype,
            **attributes,
        )
        ctx.ints[id(node.outputs[0])] = dataclasses.replace(source, value=out, row_sum=None)  # rows may move
