"""`qcompile.Shiftmax`: I-ViT's integer softmax over the last axis (METHODS.md §1.2), int64 inside.

Input I (int32) with real value I·S; x0 = floor(−1/S) < 0 (the integer for −1), n the exponent clamp
(I-ViT: 15 in PyTorch, 16 in TVM), b_out the output bits. Every division is a floor division:

    d   = I − max_row(I)                              (≤ 0)
    p   = d + ⌊d/2⌋ − ⌊d/16⌋                          (d·log2 e, log2 e ≈ 1.4375)
    p   = max(p, n·x0)
    q   = ⌊p / x0⌋ ∈ [0, n],   r = p − q·x0 ∈ (x0, 0]  (2^(p·S) = 2^(−q)·2^(r·S))
    e   = max(0, (⌊r/2⌋ − x0) · 2^(n − q))            (2^t ≈ 1 + t/2 on (−1, 0]; real value e·S/2^n)
    sum = min(Σ_row e, 2^31 − 1),  f = ⌊(2^31 − 1) / sum⌋
    out = ⌊e·f / 2^(32 − b_out)⌋                      (real value out / 2^(b_out − 1), in [0, 2^(b_out−1) − 1])

Bounds: e ≤ −x0·2^n; with |x0| < 2^31 and n ≤ 31 the products stay below 2^63 (the caller keeps
−x0·2^n·row length within int64; `shiftmax_x0` rejects scales whose x0 overflows int32). e·f ≤ 2^31 − 1.

ONNX body: floor division by a constant of either sign as (a − Mod(a, b)) / b (Mod with fmod = 0 has
the divisor's sign, so the truncating Div divides exactly); 2^k as Pow on int64 (exact below 2^63).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnxscript import INT32, INT64, script
from onnxscript import opset18 as op

from qcompile.intops.domain import QCOMPILE_OPSET

__all__ = ["shiftmax", "shiftmax_x0", "Shiftmax"]

INT32_MAX = 2**31 - 1


def shiftmax_x0(scale: float) -> int:
    """x0 = floor(−1/S), the integer for −1 at input scale S."""
    x0 = math.floor(-1.0 / float(scale))
    if not -(2**31) <= x0 < 0:
        raise ValueError(f"shiftmax input scale {scale} gives x0 = {x0}, outside int32")
    return x0


def shiftmax(x: np.ndarray, x0: int, n: int, out_bits: int) -> np.ndarray:
    """NumPy reference (int64 result)."""
    i = np.asarray(x).astype(np.int64)
    d = i - i.max(axis=-1, keepdims=True)
    p = np.maximum(d + (d >> 1) - (d >> 4), n * x0)
    q = p // x0
    r = p - q * x0
    e = np.maximum(0, ((r >> 1) - x0) * np.left_shift(np.int64(1), n - q))
    total = np.minimum(e.sum(axis=-1, keepdims=True), INT32_MAX)
    factor = INT32_MAX // total
    return (e * factor) >> (32 - out_bits)


@script(QCOMPILE_OPSET, default_opset=op)
def Shiftmax(x: INT32, x0: INT64, n: INT64, out_bits: INT64) -> INT64:
    i = op.Cast(x, to=onnx.TensorProto.INT64)
    last = op.Constant(value_ints=[-1])
    two = op.CastLike(2, i)
    sixteen = op.CastLike(16, i)
    d = op.Sub(i, op.ReduceMax(i, last, keepdims=1))
    half = op.Div(op.Sub(d, op.Mod(d, two)), two)
    sixteenth = op.Div(op.Sub(d, op.Mod(d, sixteen)), sixteen)
    p = op.Max(op.Sub(op.Add(d, half), sixteenth), op.Mul(n, x0))
    q = op.Div(op.Sub(p, op.Mod(p, x0)), x0)
    r = op.Sub(p, op.Mul(q, x0))
    r_half = op.Div(op.Sub(r, op.Mod(r, two)), two)
    e = op.Max(op.CastLike(0, i), op.Mul(op.Sub(r_half, x0), op.Pow(two, op.Sub(n, q))))
    limit = op.CastLike(2147483647, i)
    total = op.Min(op.ReduceSum(e, last, keepdims=1), limit)
    factor = op.Div(limit, total)
    shift = op.Pow(two, op.Sub(op.CastLike(32, i), out_bits))
    return op.Div(op.Mul(e, factor), shift)
