"""`qcompile.IntSqrt`: ⌊√v⌋ of int64 v ∈ [0, 2^62], integer ops only (I-BERT Alg. 4, METHODS.md §2.1).

Newton's iteration x ← ⌊(x + ⌊v/x⌋)/2⌋ from x0 = 2^⌈bits(v)/2⌉ ≥ √v decreases strictly until it reaches
⌊√v⌋, after which it would rise; I-BERT stops at the first non-decrease. Here every step is
x ← min(x, ⌊(x + ⌊v/x⌋)/2⌋), which stays at ⌊√v⌋ once there, so a fixed number of steps replaces the
data-dependent loop. x0/√v ≤ 2 and Newton squares the relative error, so `STEPS` = 6 covers 62-bit v
(tested against math.isqrt, including every power of two and perfect squares ± 1). I-ViT's fixed
10 steps from 2^16 do not converge for small or very large variances (METHODS.md §1.8.4).

bits(v) without a float log: Σ_k [v ≥ 2^k], k = 0…62 (GreaterOrEqual against a constant vector, Cast,
ReduceSum). v = 0 gives x0 = 1, then 0. Divisions by max(x, 1) (positive operands: truncation = floor).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnxscript import INT64, script
from onnxscript import opset18 as op

from qcompile.intops.domain import QCOMPILE_OPSET

__all__ = ["STEPS", "MAX_INPUT_BITS", "int_sqrt", "IntSqrt"]

STEPS = 6
MAX_INPUT_BITS = 62


def int_sqrt(v: np.ndarray) -> np.ndarray:
    """NumPy reference (int64): the same fixed-step iteration."""
    v = np.asarray(v, dtype=np.int64)
    if np.any(v < 0) or np.any(v > 2**MAX_INPUT_BITS):
        raise ValueError(f"int_sqrt takes 0 ≤ v ≤ 2^{MAX_INPUT_BITS}")
    bits = np.sum(v[..., None] >= np.left_shift(np.int64(1), np.arange(MAX_INPUT_BITS + 1, dtype=np.int64)), axis=-1)
    x = np.left_shift(np.int64(1), (bits + 1) // 2)
    for _ in range(STEPS):
        x = np.minimum(x, (x + v // np.maximum(x, 1)) // 2)
    return x


@script(QCOMPILE_OPSET, default_opset=op)
def IntSqrt(v: INT64) -> INT64:
    powers = op.Pow(op.CastLike(2, v), op.Range(op.CastLike(0, v), op.CastLike(63, v), op.CastLike(1, v)))
    above = op.Cast(op.GreaterOrEqual(op.Unsqueeze(v, op.Constant(value_ints=[-1])), powers), to=onnx.TensorProto.INT64)
    bits = op.ReduceSum(above, op.Constant(value_ints=[-1]), keepdims=0)
    one = op.CastLike(1, v)
    two = op.CastLike(2, v)
    x = op.Pow(two, op.Div(op.Add(bits, one), two))
    x = op.Min(x, op.Div(op.Add(x, op.Div(v, op.Max(x, one))), two))
    x = op.Min(x, op.Div(op.Add(x, op.Div(v, op.Max(x, one))), two))
    x = op.Min(x, op.Div(op.Add(x, op.Div(v, op.Max(x, one))), two))
    x = op.Min(x, op.Div(op.Add(x, op.Div(v, op.Max(x, one))), two))
    x = op.Min(x, op.Div(op.Add(x, op.Div(v, op.Max(x, one))), two))
    x = op.Min(x, op.Div(op.Add(x, op.Div(v, op.Max(x, one))), two))
    return x
