"""`qcompile.IntGELU`: I-BERT's integer GELU with a second-order erf polynomial (METHODS.md §2.1).

GELU(x) ≈ x·½[1 + L(x/√2)],  L(u) = sgn(u)·[a(min(|u|, −b) + b)² + 1],  a = −0.2888, b = −1.769.
For input I (int32) at scale S, with S' = S/k (k = 1.4142 ≈ √2, as in the I-BERT code):

    b_int = ⌊b / S'⌋,   c_int = ⌊(1/a) / S'²⌋                      (compile-time constants)
    y     = sgn(I)·((min(|I|, −b_int) + b_int)² + c_int)            (real value y·a·S'², = L(I·S'))
    y     = ⌊y / 2^n⌋                                                (scale a·S'²·2^n)
    one   = ⌊1 / (a·S'²·2^n)⌋                                         (the "+1", at y's scale; negative, as a < 0)
    out   = I·(y + one)                                               (real value out · S·a·S'²·2^n / 2)

I-BERT fixes n = 14 for its 32-bit GELU inputs (tiny S, |c_int| ~ 2^30). With 8-bit inputs |c_int| is
a few thousand and n = 14 would leave y ∈ {−1, 0}, so `int_gelu_params` picks n = max(0, bits(|c_int|) − 16):
y keeps 16 significant bits whatever the input scale.

The output scale S·a·S'²·2^n/2 is negative (a < 0); `int_gelu_params` returns it, and the next
requantization folds the sign (a negative multiplier is written as a negated output). ⌊·/2^n⌋ of a
negative y is a floor division, written in ONNX as (y − Mod(y, 2^n)) / 2^n.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnxscript import INT32, INT64, script
from onnxscript import opset18 as op

from qcompile.intops.domain import QCOMPILE_OPSET

__all__ = ["ERF_A", "ERF_B", "ERF_K", "int_gelu_params", "int_gelu", "IntGELU"]

ERF_A, ERF_B, ERF_K = -0.2888, -1.769, 1.4142


POLY_BITS = 16


def int_gelu_params(scale: float, n: int | None = None, poly_bits: int = POLY_BITS) -> tuple[int, int, int, int, float]:
    """(b_int, c_int, one, n, output scale) for input scale S (float64, as the I-BERT code); n chosen
    so that y keeps `poly_bits` significant bits unless given."""
    s = float(scale) / ERF_K
    b_int = math.floor(ERF_B / s)
    c_int = math.floor((1.0 / ERF_A) / s**2)
    if n is None:
        n = max(0, abs(c_int).bit_length() - poly_bits)
    poly_scale = ERF_A * s**2 * 2.0**n
    one = math.floor(1.0 / poly_scale)
    return b_int, c_int, one, n, float(scale) * poly_scale / 2.0


def int_gelu(x: np.ndarray, b_int: int, c_int: int, one: int, n: int) -> np.ndarray:
    """NumPy reference (int64 result)."""
    i = np.asarray(x).astype(np.int64)
    y = np.sign(i) * ((np.minimum(np.abs(i), -b_int) + b_int) ** 2 + c_int)
    return i * ((y >> n) + one)


@script(QCOMPILE_OPSET, default_opset=op)
def IntGELU(x: INT32, b_int: INT64, c_int: INT64, one: INT64, n: INT64) -> INT64:
    i = op.Cast(x, to=onnx.TensorProto.INT64)
    clipped = op.Add(op.Min(op.Abs(i), op.Neg(b_int)), b_int)
    y = op.Mul(op.Sign(i), op.Add(op.Mul(clipped, clipped), c_int))
    divisor = op.Pow(op.CastLike(2, i), n)
    y = op.Div(op.Sub(y, op.Mod(y, divisor)), divisor)
    return op.Mul(i, op.Add(y, one))
