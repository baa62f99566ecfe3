"""`qcompile.IntExpShift`: I-ViT's shift-based integer exponential (`int_exp_shift`, METHODS.md §1.2–1.3).

For an integer d ≤ 0 with real value d·S, x0 = floor(−1/S) < 0 (the integer for −1) and the clamp n:

    p = d + ⌊d/2⌋ − ⌊d/16⌋                     (d·log2 e with log2 e ≈ 1.4375; e^(d·S) ≈ 2^(p·S))
    p = max(p, n·x0)
    q = ⌊p / x0⌋ ∈ [0, n],  r = p − q·x0 ∈ (x0, 0]
    e = ⌊(r/2 − x0) · 2^(n − q)⌋ = ⌊(r − 2·x0) · 2^(n − q) / 2⌋     (2^t ≈ 1 + t/2 for t ∈ (−1, 0])

with real value e·S/2^n ≈ exp(d·S). This is the PyTorch form (⌊·⌋ after the shift); the TVM kernels
compute (⌊r/2⌋ − x0)·2^(n−q), which differs by up to 2^(n−q−1) when r is odd. r − 2x0 > 0, so e > 0.
Every ⌊a/b⌋ with b of either sign is written in ONNX as (a − Mod(a, b)) / b (exact); 2^k as Pow on int64.
"""

from __future__ import annotations

import numpy as np
from onnxscript import INT64, script
from onnxscript import opset18 as op

from qcompile.intops.domain import QCOMPILE_OPSET

__all__ = ["int_exp_shift", "exp_x0", "IntExpShift"]


def exp_x0(scale: float) -> int:
    """x0 = floor(−1/S), the integer for −1 at scale S (int32 range)."""
    x0 = int(np.floor(-1.0 / float(scale)))
    if not -(2**31) <= x0 < 0:
        raise ValueError(f"integer exp at scale {scale} gives x0 = {x0}, outside int32")
    return x0


def int_exp_shift(d: np.ndarray, x0: int, n: int) -> np.ndarray:
    """NumPy reference (int64): e with e·S/2^n ≈ exp(d·S), for int d ≤ 0."""
    d = np.asarray(d, dtype=np.int64)
    p = np.maximum(d + (d >> 1) - (d >> 4), n * x0)
    q = p // x0
    r = p - q * x0
    return ((r - 2 * x0) * np.left_shift(np.int64(1), n - q)) >> 1


@script(QCOMPILE_OPSET, default_opset=op)
def IntExpShift(d: INT64, x0: INT64, n: INT64) -> INT64:
    two = op.CastLike(2, d)
    sixteen = op.CastLike(16, d)
    half = op.Div(op.Sub(d, op.Mod(d, two)), two)
    sixteenth = op.Div(op.Sub(d, op.Mod(d, sixteen)), sixteen)
    p = op.Max(op.Sub(op.Add(d, half), sixteenth), op.Mul(n, x0))
    q = op.Div(op.Sub(p, op.Mod(p, x0)), x0)
    r = op.Sub(p, op.Mul(q, x0))
    return op.Div(op.Mul(op.Sub(r, op.Mul(two, x0)), op.Pow(two, op.Sub(n, q))), two)
