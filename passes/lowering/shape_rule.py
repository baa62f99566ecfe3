"""Data-movement ops on integer values, and scalar rescaling.

Reshape, Transpose, Squeeze, Unsqueeze, Flatten, Identity, Gather, Slice and Expand move elements
without changing them, so q' = op(q) keeps the same per-tensor scale, zero point and range: the node is
re-emitted with the integer tensor as its data input (shape/index inputs are int64 and pass unchanged).
A per-channel value (an accumulator at S_x·S_w[n], a LayerNorm output) passes unchanged through ops that
keep the last axis (Identity; Gather along another axis, e.g. the CLS token); before any other it is
requantized to the QuantSpec found at the end of its chain of data-movement ops, since the channel axis
may move.

Mul by a positive scalar constant c only changes the scale: v·c ≈ (q − z)·(s·c) (the attention 1/√d).
Mul by a constant vector λ along the last axis (LayerScale) makes the scale per channel, s·λ, signs
included; `requantize_to` applies them at the next requantization.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.ir import const_array, quant_meta

__all__ = ["DATA_MOVEMENT", "is_data_movement", "keeps_channels", "downstream_spec", "scalar_factor", "channel_factor"]

DATA_MOVEMENT = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Gather", "Slice", "Expand")


def is_data_movement(node: ir.Node) -> bool:
    """A standard data-movement op whose data input (0) is a computed float tensor."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in DATA_MOVEMENT or not node.inputs:
        return False
    data = node.inputs[0]
    return data is not None and data.const_value is None and data.dtype == ir.DataType.FLOAT


def keeps_channels(node: ir.Node) -> bool:
    """The op leaves the last axis (the channel axis of per-channel scales) where and as it is."""
    if node.op_type == "Identity":
        return True
    if node.op_type == "Gather":
        shape = node.inputs[0].shape
        axis = node.attributes.get_int("axis", 0)
        return shape is not None and axis % len(shape) != len(shape) - 1
    return False


def downstream_spec(value: ir.Value) -> quant_meta.QuantSpec | None:
    """The uniform per-tensor QuantSpec at the end of `value`'s single-use chain of data-movement ops."""
    while True:
        spec = quant_meta.get_quant(value)
        if spec is not None:
            return spec if spec.kind == "uniform" and spec.axis is None else None
        uses = list(value.uses())
        if len(uses) != 1 or uses[0].idx != 0 or not is_data_movement(uses[0].node):
            return None
        value = uses[0].node.outputs[0]


def scalar_factor(node: ir.Node) -> tuple[ir.Value, float] | None:
    """(the computed input, c) for Mul(x, c) or Div(x, 1/c) with a positive scalar constant c."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("Mul", "Div") or len(node.inputs) != 2:
        return None
    for index in ((0, 1), (1, 0)) if node.op_type == "Mul" else ((0, 1),):
        x, c = node.inputs[index[0]], node.inputs[index[1]]
        array = const_array(c)
        if array is None or array.size != 1 or x is None or const_array(x) is not None:
            continue
        factor = float(array.reshape(()))
        factor = factor if node.op_type == "Mul" else (1.0 / factor if factor != 0 else 0.0)
        if factor > 0 and np.isfinite(factor):
            return x, factor
    return None


def channel_factor(node: ir.Node, channels: int | None) -> tuple[ir.Value, np.ndarray] | None:
    """(the computed input, λ) for Mul(x, λ) with a constant vector λ of `channels` entries."""
    if node.domain not in ("", "ai.onnx") or node.op_type != "Mul" or len(node.inputs) != 2 or channels is None:
        return None
    for x, c in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
        array = const_array(c)
        if array is not None and x is not None and const_array(x) is None and array.size == channels and array.shape[-1:] == (channels,):
            return x, array.reshape(-1).astype(np.float64)
    return None
