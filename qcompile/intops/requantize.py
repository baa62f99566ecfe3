"""`qcompile.Requantize`: int32 accumulator → b-bit integer with a dyadic multiplier, rounding half up.

    y = clamp(floor((x · m + b + 2^(e−1)) / 2^e), lo, hi)    (no rounding offset when e = 0)

x int32; m, e int64 (`dyadic.dyadic_multiplier`, scalars for per-tensor, vectors broadcasting over the last
axis for per-channel); b an int64 addend in units of 2^−e output steps (scalar or per channel): a real
offset o on the output grid enters as b = round(o·2^e), so it is rounded together with x·m, once. Adding
it after the shift instead, as round(o), would bias every element of a channel by the same up to half a
step, which mean pooling keeps while it averages independent errors away (docs/methods/intonly.md). An
output zero point z is b = z·2^e. lo/hi the output range (e.g. −128..127, or −2^15..2^15−1 for the int16
residual stream). The sum is formed in int64: |x·m| < 2^31·2^31 = 2^62, and the caller keeps
|x·m| + |b| + 2^(e−1) below 2^63 (`int_value.requantize_to` checks it from the input bounds; the
reference raises if it is not). Rounding is half up (toward +∞ on ties), the mode of TVM's `qnn.requantize` default
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


def requantize(x: np.ndarray, m, e, b, lo: int, hi: int) -> np.ndarray:
    """NumPy reference (int64 result): clamp(floor((x·m + b + 2^(e−1)) / 2^e), lo, hi)."""
    x = np.asarray(x)
    if x.dtype != np.int32:
        raise TypeError(f"requantize takes int32 accumulators, got {x.dtype}")
    m = np.asarray(m, dtype=np.int64)
    e = np.asarray(e, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    rounding = np.where(e > 0, np.left_shift(np.int64(1), np.maximum(e - 1, 0)), 0)
    worst = (
        float(np.max(np.abs(x.astype(np.float64)), initial=0.0)) * float(np.max(np.abs(m), initial=0))
        + float(np.max(np.abs(b), initial=0))
        + float(np.max(rounding, initial=0))
    )
    if worst >= 2.0**63:
        raise OverflowError(f"requantize: |x·m| + |b| + 2^(e−1) reaches {worst:.3g} ≥ 2^63")
    return np.clip((x.astype(np.int64) * m + b + rounding) >> e, lo, hi)


@script(QCOMPILE_OPSET, default_opset=op)
def Requantize(x: INT32, m: INT64, e: INT64, b: INT64, lo: INT64, hi: INT64) -> INT64:
    product = op.Add(op.Mul(op.Cast(x, to=onnx.TensorProto.INT64), m), b)
    divisor = op.Pow(op.CastLike(2, product), e)
    shifted = op.Add(product, op.Div(divisor, op.CastLike(2, product)))
    floor = op.Div(op.Sub(shifted, op.Mod(shifted, divisor)), divisor)
    return op.Clip(floor, lo, hi)
