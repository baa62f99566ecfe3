"""How the lowering represents a float value in integers, and how it moves between representations.

An `IntValue` stands for a float tensor v: an integer tensor q with

    v ≈ (q − z)·s + o

where s is a float64 scalar or a vector along the last axis (per channel: an IntLinear accumulator at
S_x·S_w[n], or a LayerNorm output at γ·√C/2^30, which may be negative), z an integer zero point (0 except
for asymmetric activation codes) and o an optional real offset per channel (a LayerNorm's β) kept out of
the integers until the next requantization. `lo`/`hi` bound q.

`requantize_to` moves v to a target per-tensor scale s_t, zero point z_t and range [lo_t, hi_t]. With
r = s/s_t written as sign(r)·m/2^e (dyadic, per channel if s is a vector):

    q_t = Requantize(sign(r)·(q − z); m, e, b = round((o/s_t + z_t)·2^e), lo_t, hi_t)

The sign is an integer ±1 multiply, so negative scales cost nothing in precision. The offset and zero
point enter inside the one rounding: adding round(o/s_t) after it would give every element of a channel
the same rounding error, a per-channel bias that the next linear carries into every token. When
|q − z|·m + |b| could reach 2^63, m and e lose low bits together until it cannot. The target container
is the smallest of uint8/int8/int16/int32 that holds [lo_t, hi_t].
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from qcompile.intops.dyadic import dyadic_multiplier
from qcompile.intops.requantize import Requantize
from qcompile.passes.lowering.emitter import Emitter

__all__ = ["IntValue", "container", "signed_multiplier", "requantize_to"]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclasses.dataclass
class IntValue:
    value: ir.Value
    scale: np.ndarray  # float64, shape () or (C,) along the last axis; entries may be negative
    zero_point: int
    lo: int
    hi: int
    offset: np.ndarray | None = None  # float64, shape () or (C,): real value added after scaling
    row_sum: int | None = None  # a bound on Σ|q − z| over the last axis, when one is known (softmax rows)

    @property
    def per_channel(self) -> bool:
        return np.ndim(self.scale) > 0

    @property
    def movable(self) -> bool:
        """Scale and offset are scalars: data movement may rearrange q freely."""
        return not self.per_channel and (self.offset is None or np.size(self.offset) == 1)

    @property
    def plain(self) -> bool:
        """Per-tensor, positive scale, no offset: shape ops and kernels may read q directly."""
        return not self.per_channel and float(self.scale) > 0 and self.offset is None


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


def signed_multiplier(
    emit: Emitter, source: IntValue, scale: float, name: str
) -> tuple[ir.Value, np.ndarray, np.ndarray]:
    """(sign(r)·(q − z) as int32, m, e) with |r| = |s/scale| ≈ m/2^e: what `Requantize` needs to put
    `source` on the grid `scale` (zero point removed, negative scales turned into an integer sign flip)."""
    q = emit.cast(source.value, ir.DataType.INT32, f"{name}_i32")
    if source.zero_point:
        q = emit.node(
            "Sub", [q, emit.const(f"{name}_zin", np.int32(source.zero_point))], f"{name}_centred", ir.DataType.INT32
        )
    ratio = np.asarray(source.scale, np.float64) / scale
    if np.any(ratio < 0):
        q = emit.node(
            "Mul",
            [q, emit.const(f"{name}_sign", np.where(ratio < 0, -1, 1).astype(np.int32))],
            f"{name}_signed",
            ir.DataType.INT32,
        )
    m, e = dyadic_multiplier(np.abs(ratio))
    return q, m, e


def requantize_to(emit: Emitter, source: IntValue, scale, zero_point: int, lo: int, hi: int, name: str) -> IntValue:
    """`source` at a new per-tensor scale, zero point and range."""
    scale = float(scale)
    q, m, e = signed_multiplier(emit, source, scale, name)
    offset = (
        np.float64(zero_point) if source.offset is None else np.asarray(source.offset, np.float64) / scale + zero_point
    )
    magnitude = max(abs(source.lo - source.zero_point), abs(source.hi - source.zero_point))
    m, e, b = _fitting_offset(m, e, offset, magnitude)
    inputs = [q, emit.const(f"{name}_m", m), emit.const(f"{name}_e", e), emit.const(f"{name}_b", b)]
    bounds = [emit.const(f"{name}_lo", np.int64(lo)), emit.const(f"{name}_hi", np.int64(hi))]
    out = emit.kernel(Requantize, [*inputs, *bounds], f"{name}_rq")
    out = emit.cast(out, container(lo, hi), name)
    return IntValue(out, np.float64(scale), zero_point, lo, hi)


def _fitting_offset(
    m: np.ndarray, e: np.ndarray, offset: np.ndarray, magnitude: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(m, e, b = round(offset·2^e)) with magnitude·m + |b| + 2^(e−1) < 2^63, dropping low bits of m and
    e together (rounding m half up) while the sum could overflow."""
    m, e = np.asarray(m, np.int64), np.asarray(e, np.int64)
    while True:
        b = np.floor(offset * np.exp2(e.astype(np.float64)) + 0.5)
        worst = (
            magnitude * np.max(m.astype(np.float64), initial=0.0)
            + np.max(np.abs(b), initial=0.0)
            + np.max(np.exp2(e - 1.0), initial=0.0)
        )
        if worst < 2.0**62 or not np.any(e > 0):  # float64 sums: a factor 2 of margin for their rounding
            return m, e, b.astype(np.int64)
        drop = (e > 0).astype(np.int64)
        m, e = (m + drop) >> drop, e - drop
