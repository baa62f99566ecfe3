"""`qcompile.Requantize`: int32 accumulator → b-bit integer with a dyadic multiplier, rounding half up.

    y = clamp(floor((x · m + 2^(e−1)) / 2^e), lo, hi)        (no offset when e = 0)

x int32; m, e int64 (`dyadic.dyadic_multiplier`, scalars for per-tensor, vectors broadcasting over the last
axis for per-channel); lo/hi the output range (e.g. −128..127, or −2^15..2^15−1 for the int16 residual
stream). The product is formed in int64: |x·m| < 2^31·2^31 = 2^62, plus the offset < 2^62, so nothing
overflows. Rounding is half up (toward +∞ on ties), the mode of TVM's `qnn.requantize` default
("UPWARD"); I-ViT's PyTorch simulation rounds half to even, so ties can differ from it by one.

ONNX body (opset 18 ops, integer types only): Cast, Mul, Pow, Div, Mod, Add, Sub, Clip. ONNX has no
arithmetic right shift for signed integers (BitShift is unsigned only), so floor division by d = 2^e is
written exactly as (a − Mod(a, d)) / d: Mod with fmod = 0 takes the divisor's sign (Python semantics), so
a − Mod(a, d) is a multiple of d and the truncating integer Div is exact.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnxscript import INT32, INT64, script
from onnxscript import opset18 as op

from qcompile.intops.domain import QCOMPILE_OPSET

__all__ = ["requantize", "Requantize"]


def requantize(x: np.ndarray, m, e, lo: int, hi: int) -> np.ndarray:
    """NumPy reference (int64 result): clamp(floor((x·m + 2^(e−1)) / 2^e), lo, hi)."""
    x = np.asarray(x)
    if x.dtype != np.int32:
        raise TypeError(f"requantize takes int32 accumulators, got {x.dtype}")
    m = np.asarray(m, dtype=np.int64)
    e = np.asarray(e, dtype=np.int64)
    offset = np.where(e > 0, np.left_shift(np.int64(1), np.maximum(e - 1, 0)), 0)
    return np.clip((x.astype(np.int64) * m + offset) >> e, lo, hi)


@script(QCOMPILE_OPSET, default_opset=op)
def Requantize(x: INT32, m: INT64, e: INT64, lo: INT64, hi: INT64) -> INT64:
    product = op.Mul(op.Cast(x, to=onnx.TensorProto.INT64), m)
    divisor = op.Pow(op.CastLike(2, product), e)
    shifted = op.Add(product, op.Div(divisor, op.CastLike(2, product)))
    floor = op.Div(op.Sub(shifted, op.Mod(shifted, divisor)), divisor)
    return op.Clip(floor, lo, hi)
