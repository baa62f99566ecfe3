"""Data-movement ops on integer values, and scalar rescaling.

Reshape, Transpose, Squeeze, Unsqueeze, Flatten, Identity, Gather, Slice and Expand move elements
without changing them, so q' = op(q) keeps the same per-tensor scale, zero point and range: the node is
re-emitted with the integer tensor as its data input (shape/index inputs are int64 and pass unchanged).
A per-channel value (an accumulator at S_x·S_w[n]) is first requantized to the QuantSpec found at the
end of its chain of data-movement ops, since the channel axis may move.

Mul by a positive scalar constant c only changes the scale: v·c ≈ (q − z)·(s·c) (the attention 1/√d).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.ir import const_array, quant_meta

__all__ = ["DATA_MOVEMENT", "is_data_movement", "downstream_spec", "scalar_factor"]

DATA_MOVEMENT = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Gather", "Slice", "Expand")


def is_data_movement(node: ir.Node) -> bool:
    """A standard data-movement op whose data input (0) is a computed float tensor."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in DATA_MOVEMENT or not node.inputs:
        return False
    data = node.inputs[0]
    return data is not None and data.const_value is None and data.dtype == ir.DataType.FLOAT


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
