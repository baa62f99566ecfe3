"""How the lowering represents a float value in integers, and how it moves between representations.

An `IntValue` stands for a float tensor v: an integer tensor q with v ≈ (q − z)·s, where s is a float64
scalar or a vector along the last axis (per-channel, e.g. an IntLinear accumulator at S_x·S_w[n]) and z
an integer zero point (0 except for asymmetric activation codes). `lo`/`hi` bound q.

`requantize_to` moves q to a target scale s_t, zero point z_t and range [lo_t, hi_t] with the dyadic
multiplier of s/s_t (per channel if s is a vector):

    q_t = clamp(Requantize(q − z; m, e), lo_t − z_t, hi_t − z_t) + z_t

so the only rounding is the one in `Requantize`. Integer dtypes only; the target container is the
smallest of uint8/int8/int16/int32 that holds [lo_t, hi_t].
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from qcompile.intops.dyadic import dyadic_multiplier
from qcompile.intops.requantize import Requantize
from qcompile.passes.lowering.emitter import Emitter

__all__ = ["IntValue", "container", "requantize_to"]


@dataclasses.dataclass
class IntValue:
    value: ir.Value
    scale: np.ndarray  # float64, shape () or (C,) along the last axis
    zero_point: int
    lo: int
    hi: int

    @property
    def per_channel(self) -> bool:
        return np.ndim(self.scale) > 0


def container(lo: int, hi: int) -> ir.DataType:
    """The smallest integer dtype holding [lo, hi]."""
    for dtype, (low, high) in (
        (ir.DataType.UINT8, (0, 255)),
        (ir.DataType.INT8, (-128, 127)),
        (ir.DataType.INT16, (-(2**15), 2**15 - 1)),
        (ir.DataType.INT32, (-(2**31), 2**31 - 1)),
    ):
        if low <= lo and hi <= high:
            return dtype
    return ir.DataType.INT64


def requantize_to(emit: Emitter, source: IntValue, scale, zero_point: int, lo: int, hi: int, name: str) -> IntValue:
    """`source` at a new per-tensor (or per-channel) scale, zero point and range."""
    scale = np.asarray(scale, dtype=np.float64)
    q = emit.cast(source.value, ir.DataType.INT32, f"{name}_i32")
    if source.zero_point:
        q = emit.node("Sub", [q, emit.const(f"{name}_zin", np.int32(source.zero_point))], f"{name}_centred", ir.DataType.INT32)
    m, e = dyadic_multiplier(np.asarray(source.scale, np.float64) / scale)
    bounds = [emit.const(f"{name}_lo", np.int64(lo - zero_point)), emit.const(f"{name}_hi", np.int64(hi - zero_point))]
    out = emit.kernel(Requantize, [q, emit.const(f"{name}_m", m), emit.const(f"{name}_e", e), *bounds], f"{name}_rq")
    if zero_point:
        out = emit.node("Add", [out, emit.const(f"{name}_zout", np.int64(zero_point))], f"{name}_shifted", ir.DataType.INT64)
    out = emit.cast(out, container(lo, hi), name)
    return IntValue(out, scale, zero_point, lo, hi)
