"""`qcompile.Shiftmax`: I-ViT's integer softmax over the last axis (METHODS.md §1.2), int64 inside.

Input I (int32) with real value I·S; x0 = floor(−1/S) (`int_exp.exp_x0`), n the exponent clamp (I-ViT: 15
in PyTorch, 16 in TVM), b_out the output bits:

    e   = IntExpShift(I − max_row(I), x0, n)        (real value e·S/2^n ≈ exp((I − max)·S))
    sum = min(Σ_row e, 2^31 − 1),  f = ⌊(2^31 − 1) / sum⌋
    out = ⌊e·f / 2^(32 − b_out)⌋                     (real value out / 2^(b_out − 1), in [0, 2^(b_out−1) − 1])

Bounds: e ≤ −2·x0·2^n / 2 = −x0·2^n per element, so with |x0| < 2^31, n ≤ 16 and rows shorter than 2^15
the sum stays below 2^63 before the clamp; e·f ≤ 2^31 − 1. The row maximum has e = −x0·2^n > 0, so the
sum is never 0. All divisions here have positive operands, where the truncating ONNX Div is a floor.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnxscript import INT32, INT64, script
from onnxscript import opset18 as op

from qcompile.intops.domain import QCOMPILE_OPSET
from qcompile.intops.int_exp import IntExpShift, int_exp_shift

__all__ = ["shiftmax", "Shiftmax"]

INT32_MAX = 2**31 - 1


def shiftmax(x: np.ndarray, x0: int, n: int, out_bits: int) -> np.ndarray:
    """NumPy reference (int64 result)."""
    i = np.asarray(x).astype(np.int64)
    e = int_exp_shift(i - i.max(axis=-1, keepdims=True), x0, n)
    total = np.minimum(e.sum(axis=-1, keepdims=True), INT32_MAX)
    return (e * (INT32_MAX // total)) >> (32 - out_bits)


@script(QCOMPILE_OPSET, default_opset=op)
def Shiftmax(x: INT32, x0: INT64, n: INT64, out_bits: INT64) -> INT64:
    i = op.Cast(x, to=onnx.TensorProto.INT64)
    last = op.Constant(value_ints=[-1])
    e = IntExpShift(op.Sub(i, op.ReduceMax(i, last, keepdims=1)), x0, n)
    limit = op.CastLike(2147483647, i)
    total = op.Min(op.ReduceSum(e, last, keepdims=1), limit)
    shift = op.Pow(op.CastLike(2, i), op.Sub(op.CastLike(32, i), out_bits))
    return op.Div(op.Mul(e, op.Div(limit, total)), shift)
