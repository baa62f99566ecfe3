"""`qcompile.ILayerNorm`: integer LayerNorm normalization over the last axis (I-BERT/I-ViT, METHODS.md
§1.4, §2.1), int64 inside, without the affine (γ, β fold into the next requantization).

Input I (int32) with C channels; `shift` (from calibration) keeps the sum of squares small:

    μ   = ⌊(2·ΣI + C) / (2C)⌋                      (mean rounded half up)
    y   = I − μ
    v   = Σ ⌊y / 2^shift⌋²                          (I-BERT's overflow shift; int64 here, so shift is only
                                                     needed to stay below 2^62 or a 32-bit target's range)
    σ   = max(IntSqrt(v), 1) · 2^shift
    f   = ⌊2^61 / σ⌋
    out = ⌊y·f / 2^31⌋                              (real value out·√C/2^30 ≈ (x − mean)/std)

y/σ·√C is the normalized value because σ ≈ √Σy² = √C·std. The σ ≥ 1 guard makes a constant row
(v = 0) give 0 instead of a division by zero; I-BERT and I-ViT have no guard. ε of LayerNorm is not
modelled (as in both papers): it matters only for rows whose variance is near ε.
Bounds: |y·f| ≤ 2^61·|y|/σ. With shift = 0, |y| ≤ √v and y is an integer, so |y| ≤ σ and |out| ≤ 2^30;
with a shift, |y| ≤ (|⌊y/2^shift⌋| + 1)·2^shift ≤ 2σ and |out| ≤ 2^31. Both fit int32, and |y·f| ≤ 2^62
fits int64.

The factor is I-BERT's ⌊2^31/σ⌋ scaled by 2^30: on a 22-bit residual stream σ reaches 2^21–2^26 on
DINOv2's massive-activation tokens, where ⌊2^31/σ⌋ is only 32–1024 and rounds the whole token's scale by
up to 3%; ⌊2^61/σ⌋ keeps ≥ 35 bits. The 16- against 22-bit residual grid comparison in
benchmarks/results/intonly_report.md is the measurement that depends on it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnxscript import INT32, INT64, script
from onnxscript import opset18 as op

from qcompile.intops.domain import QCOMPILE_OPSET
from qcompile.intops.isqrt import IntSqrt, int_sqrt

__all__ = ["i_layernorm", "ILayerNorm", "OUTPUT_FRACTION_BITS"]

OUTPUT_FRACTION_BITS = 30  # real value = out · √C / 2^30


def i_layernorm(x: np.ndarray, shift: int) -> np.ndarray:
    """NumPy reference (int64 result)."""
    i = np.asarray(x).astype(np.int64)
    channels = i.shape[-1]
    mean = (2 * i.sum(axis=-1, keepdims=True) + channels) // (2 * channels)
    y = i - mean
    variance = np.sum((y >> shift) ** 2, axis=-1, keepdims=True)
    sigma = np.maximum(int_sqrt(variance), 1) << shift
    factor = (np.int64(1) << 61) // sigma
    return (y * factor) >> 31


@script(QCOMPILE_OPSET, default_opset=op)
def ILayerNorm(x: INT32, shift: INT64) -> INT64:
    i = op.Cast(x, to=onnx.TensorProto.INT64)
    last = op.Constant(value_ints=[-1])
    one = op.CastLike(1, i)
    two = op.CastLike(2, i)
    channels = op.CastLike(op.Gather(op.Shape(i), op.Constant(value_int=-1)), i)
    total = op.Add(op.Mul(two, op.ReduceSum(i, last, keepdims=1)), channels)
    divisor = op.Mul(two, channels)
    mean = op.Div(op.Sub(total, op.Mod(total, divisor)), divisor)
    y = op.Sub(i, mean)
    scale = op.Pow(two, shift)
    shifted = op.Div(op.Sub(y, op.Mod(y, scale)), scale)
    variance = op.ReduceSum(op.Mul(shifted, shifted), last, keepdims=1)
    sigma = op.Mul(op.Max(IntSqrt(variance), one), scale)
    factor = op.Div(op.CastLike(2305843009213693952, i), sigma)
    product = op.Mul(y, factor)
    divisor = op.CastLike(2147483648, i)
    return op.Div(op.Sub(product, op.Mod(product, divisor)), divisor)
