"""`qcompile.Shiftmax`: I-ViT's integer softmax over the last axis (METHODS.md §1.2), int64 inside.

Input I (int32) with real value I·S; x0 = floor(−1/S) (`int_exp.exp_x0`), n the exponent clamp (I-ViT: 15
in PyTorch, 16 in TVM), b_out the output bits:

    e   = IntExpShift(I − max_row(I), x0, n)        (real value e·S/2^n ≈ exp((I − max)·S))
    f   = ⌊2^62 / Σ_row e⌋
    out = ⌊e·f / 2^(63 − b_out)⌋                     (real value out / 2^(b_out − 1), in [0, 2^(b_out−1)])

Deviation from I-ViT: it normalizes with the 31-bit factor ⌊(2^31 − 1)/min(Σ, 2^31 − 1)⌋, a small integer
whenever Σ is large (3 for Σ ≈ 6·10^8, a relative error up to 1/3) and QAT learns around it; here the
factor is taken against 2^62 in int64, so it keeps ≥ 30 bits. Bounds: e ≤ −x0·2^n per element; the row
sum must stay below 2^62 (rows of L values: L·|x0|·2^n < 2^62, which the lowering guarantees), then
e·f ≤ 2^62. The row maximum has e = −x0·2^n > 0, so the sum is never 0. All divisions here have positive
operands, where the truncating ONNX Div is a floor.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnxscript import INT32, INT64, script
from onnxscript import opset18 as op

from qcompile.intops.domain import QCOMPILE_OPSET
from qcompile.intops.int_exp import IntExpShift, int_exp_shift

__all__ = ["shiftmax", "Shiftmax"]


def shiftmax(x: np.ndarray, x0: int, n: int, out_bits: int) -> np.ndarray:
    """NumPy reference (int64 result)."""
    i = np.asarray(x).astype(np.int64)
    e = int_exp_shift(i - i.max(axis=-1, keepdims=True), x0, n)
    factor = (np.int64(1) << 62) // e.sum(axis=-1, keepdims=True)
    return (e * factor) >> (63 - out_bits)


@script(QCOMPILE_OPSET, default_opset=op)
def Shiftmax(x: INT32, x0: INT64, n: INT64, out_bits: INT64) -> INT64:
    i = op.Cast(x, to=onnx.TensorProto.INT64)
    last = op.Constant(value_ints=[-1])
    e = IntExpShift(op.Sub(i, op.ReduceMax(i, last, keepdims=1)), x0, n)
    two = op.CastLike(2, i)
    factor = op.Div(op.Pow(two, op.CastLike(62, i)), op.ReduceSum(e, last, keepdims=1))
    return op.Div(op.Mul(e, factor), op.Pow(two, op.Sub(op.CastLike(63, i), out_bits)))
