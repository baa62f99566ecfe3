"""Dyadic multipliers: a real ratio M = S_in / S_out written as m / 2^e with an integer mantissa m.

As in I-ViT/I-BERT `batch_frexp(max_bit=31)` (METHODS.md §0), computed in float64:
    frexp(M) = (f, p),  f ∈ [0.5, 1)
    m = round_half_up(f · 2^31) ∈ [2^30, 2^31]      (m = 2^31 is renormalized to 2^30 with e − 1)
    e = 31 − p
so that m / 2^e = M within a relative 2^−31. A product x·m of an int32 x fits int64 (< 2^62), which is
what `requantize` relies on. Shifts are capped at `MAX_SHIFT` = 62 (the rounding offset 2^(e−1) and the
divisor 2^e must fit int64): for M < 2^−31 the mantissa is shifted down instead, rounding half up, and
becomes 0 for M below 2^−62, where every int32 input requantizes to 0 anyway. M must be finite, ≥ 0
and below 2^31 (a larger ratio would need a left shift; no scale pair in a quantized graph comes close).
"""

from __future__ import annotations

import numpy as np

__all__ = ["MANTISSA_BITS", "MAX_SHIFT", "dyadic_multiplier"]

MANTISSA_BITS = 31
MAX_SHIFT = 62


def dyadic_multiplier(ratio) -> tuple[np.ndarray, np.ndarray]:
    """(m, e) as int64 arrays of `ratio`'s shape with m / 2^e ≈ ratio."""
    ratio = np.asarray(ratio, dtype=np.float64)
    if not np.all(np.isfinite(ratio)) or np.any(ratio < 0) or np.any(ratio >= 2.0**MANTISSA_BITS):
        raise ValueError(
            f"dyadic multiplier needs finite ratios in [0, 2^{MANTISSA_BITS}), got {ratio.min()}..{ratio.max()}"
        )
    fraction, exponent = np.frexp(ratio)
    mantissa = np.floor(fraction * 2.0**MANTISSA_BITS + 0.5).astype(np.int64)
    shift = (MANTISSA_BITS - exponent).astype(np.int64)
    carry = mantissa == 2**MANTISSA_BITS
    mantissa = np.where(carry, mantissa // 2, mantissa)
    shift = np.where(carry, shift - 1, shift)
    excess = np.clip(shift - MAX_SHIFT, 0, 63)
    mantissa = np.where(
        excess > 0,
        (mantissa + np.where(excess > 0, np.left_shift(1, np.maximum(excess - 1, 0)), 0)) >> excess,
        mantissa,
    )
    shift = np.minimum(shift, MAX_SHIFT)
    zero = ratio == 0
    return np.where(zero, 0, mantissa).astype(np.int64), np.where(zero, 0, shift).astype(np.int64)
