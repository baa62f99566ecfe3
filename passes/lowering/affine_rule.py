"""Elementwise affine ops that only change an `IntValue`'s scale or offset, emitting nothing.

With v ≈ (q − z)·s + o:

    v + c, c + v   → offset o + c          (a bias, a position embedding: c constant, broadcastable)
    v − c          → offset o − c
    c − v          → scale −s, offset c − o
    v·c, c·v       → scale s·c, offset o·c  (c a scalar, or a vector along the last axis: LayerScale λ)
    v / c          → scale s/c, offset o/c  (c a nonzero scalar)
    Cast(int → float) of an integer tensor q  → IntValue(q, scale 1)   (e.g. an attention mask)
    Cast(float → float)                        → v unchanged           (legacy exports cast the image)

The new scale and offset are applied at the next requantization (`requantize_to`), where the sign of s
becomes an integer ±1 multiply and round(o/S) a constant add, so none of these ops costs a rounding.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir

from qcompile.ir import const_array
from qcompile.passes.lowering.int_value import IntValue
from qcompile.passes.lowering.rule_base import LoweringRule, MatchResult, failed, matched

__all__ = ["INTEGER_TYPES", "lower_affine", "AffineIntoScaleOffset"]

INTEGER_TYPES = {
    ir.DataType.INT8: (-(2**7), 2**7 - 1),
    ir.DataType.UINT8: (0, 2**8 - 1),
    ir.DataType.INT16: (-(2**15), 2**15 - 1),
    ir.DataType.INT32: (-(2**31), 2**31 - 1),
    ir.DataType.INT64: (-(2**31), 2**31 - 1),  # as read by Requantize (int32); masks and ids are small
    ir.DataType.BOOL: (0, 1),
}


def _shift(source: IntValue, offset) -> IntValue:
    current = 0.0 if source.offset is None else source.offset
    return dataclasses.replace(source, offset=np.asarray(current + np.asarray(offset, np.float64), np.float64))


def _scaled(source: IntValue, factor) -> IntValue:
    factor = np.asarray(factor, np.float64)
    offset = None if source.offset is None else source.offset * factor
    return dataclasses.replace(source, scale=np.asarray(source.scale, np.float64) * factor, offset=offset)


def _fits_last_axis(array: np.ndarray, channels) -> bool:
    return array.size == 1 or (isinstance(channels, int) and array.size == channels and array.shape[-1:] == (channels,))


def lower_affine(node: ir.Node, integer) -> IntValue | None:
    """The IntValue of `node`'s output if it is one of the affine forms above, else None.
    `integer(value)` returns the IntValue of a computed input."""
    if node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
        return None
    if node.op_type == "Cast" and node.inputs[0] is not None and node.inputs[0].dtype == ir.DataType.FLOAT:
        return integer(node.inputs[0]) if node.attributes.get_int("to", 0) == int(ir.DataType.FLOAT) else None
    if node.op_type == "Cast" and node.inputs[0] is not None and node.inputs[0].dtype in INTEGER_TYPES:
        if node.attributes.get_int("to", 0) != int(ir.DataType.FLOAT):
            return None
        lo, hi = INTEGER_TYPES[node.inputs[0].dtype]
        return IntValue(node.inputs[0], np.float64(1.0), 0, lo, hi)
    if node.op_type not in ("Add", "Sub", "Mul", "Div") or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    ca, cb = const_array(a), const_array(b)
    if (ca is None) == (cb is None):
        return None  # two computed inputs (a residual add, a product) or two constants
    computed = b if ca is not None else a
    if computed.dtype != ir.DataType.FLOAT:
        return None  # integer shape arithmetic, moved as it is
    constant = (ca if ca is not None else cb).astype(np.float64)
    source = integer(computed)
    if node.op_type == "Add":
        return _shift(source, constant)
    if node.op_type == "Sub":
        return _shift(source, -constant) if cb is not None else _shift(_scaled(source, -1.0), constant)
    channels = computed.shape[-1] if computed.shape is not None and len(computed.shape) else None
    if node.op_type == "Mul" and _fits_last_axis(constant, channels):
        return _scaled(source, constant.reshape(-1) if constant.size > 1 else constant.reshape(()))
    if node.op_type == "Div" and cb is not None and constant.size == 1 and float(constant.reshape(())) != 0.0:
        return _scaled(source, 1.0 / float(constant.reshape(())))
    return None


class AffineIntoScaleOffset(LoweringRule):
    """An affine op of the forms above → the input's `IntValue` with a new scale or offset; nothing is
    emitted. A Cast of an integer tensor takes that tensor's calibrated range (a 0/1 mask: [0, 1])."""

    op_types = ("Add", "Sub", "Mul", "Div", "Cast")

    def match(self, ctx, node: ir.Node) -> MatchResult:
        affine = lower_affine(node, ctx.integer)
        if affine is None:
            return failed("not a constant shift or scaling of one computed float tensor, nor a Cast to float")
        return matched(affine=affine)

    def rewrite(self, ctx, node: ir.Node, affine: IntValue) -> None:
        bounds = ctx.scales.bounds.get(node.outputs[0].name)
        if node.op_type == "Cast" and bounds is not None:
            affine = dataclasses.replace(affine, lo=math.floor(bounds[0]), hi=math.ceil(bounds[1]))
        ctx.ints[id(node.outputs[0])] = affine
