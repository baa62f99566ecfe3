"""`qcompile.ShiftGELU`: I-ViT's integer GELU, GELU(x) ≈ x·σ(1.702x) (METHODS.md §1.3), int64 inside.

Input I (int32) with real value I·S. σ is a two-way softmax computed with `IntExpShift` at scale 1.702·S
(x0 = ⌊−1/(1.702·S)⌋, the constant lands in x0 and costs nothing at run time), clamp n (I-ViT: 23):

    m   = max(max_row(I), 0)                          (the row is the token's feature axis)
    e1  = IntExpShift(I − m, x0, n),   e0 = IntExpShift(−m, x0, n)
    σ   = ⌊e1 · ⌊2^62/(e1 + e0)⌋ / 2^(63 − b_σ)⌋     (real value σ/2^(b_σ−1))
    out = I · σ                                      (real value out · S / 2^(b_σ − 1))

σ(y) = e^(y−m)/(e^(y−m) + e^(−m)) holds for any m. I-ViT uses m = max_row(I); here m is clamped at 0
so that both exponent arguments are ≤ 0 (a row whose values are all negative would otherwise give
IntExpShift a positive argument and a shift beyond n). With b_σ = 8 (I-ViT) σ ∈ [0, 128].

Deviation from I-ViT, as in `shiftmax`: the normalization factor is ⌊2^62/(e1 + e0)⌋ in int64 instead of
⌊(2^31 − 1)/min(e1 + e0, 2^31 − 1)⌋. At a 16-bit input grid (S = 4/32767) I-ViT's factor is 3, which
turned GELU(3.9) into 3.41; with 2^62 it is 3.87 (σ's 7-bit grid is the only rounding left). Needs
2·|x0|·2^n < 2^62.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnxscript import INT32, INT64, script
from onnxscript import opset18 as op

from qcompile.intops.domain import QCOMPILE_OPSET
from qcompile.intops.int_exp import IntExpShift, int_exp_shift

__all__ = ["GELU_SIGMOID_SLOPE", "shift_gelu", "ShiftGELU"]

GELU_SIGMOID_SLOPE = 1.702


def shift_gelu(x: np.ndarray, x0: int, n: int, sigmoid_bits: int) -> np.ndarray:
    """NumPy reference (int64 result)."""
    i = np.asarray(x).astype(np.int64)
    m = np.maximum(i.max(axis=-1, keepdims=True), 0)
    e1 = int_exp_shift(i - m, x0, n)
    e0 = int_exp_shift(-m, x0, n)
    sigmoid = (e1 * ((np.int64(1) << 62) // (e1 + e0))) >> (63 - sigmoid_bits)
    return i * sigmoid


@script(QCOMPILE_OPSET, default_opset=op)
def ShiftGELU(x: INT32, x0: INT64, n: INT64, sigmoid_bits: INT64) -> INT64:
    i = op.Cast(x, to=onnx.TensorProto.INT64)
    zero = op.CastLike(0, i)
    m = op.Max(op.ReduceMax(i, op.Constant(value_ints=[-1]), keepdims=1), zero)
    e1 = IntExpShift(op.Sub(i, m), x0, n)
    e0 = IntExpShift(op.Neg(m), x0, n)
    two = op.CastLike(2, i)
    factor = op.Div(op.Pow(two, op.CastLike(62, i)), op.Add(e1, e0))
    sigmoid = op.Div(op.Mul(e1, factor), op.Pow(two, op.Sub(op.CastLike(63, i), sigmoid_bits)))
    return op.Mul(i, sigmoid)
