"""The quantized linear layer of the LLM path, in integers: 4-bit weight codes in groups, per-token 8-bit
(or narrower) activation codes, float scales. The NumPy reference every TVM kernel of it is checked
against bit for bit.

    acc[i, g, n] = Σ_{k ∈ group g} (q[k, n] − z[g, n]) · (a[i, k] − z_a[i])          (int32, exact)
    out[i, n]    = s_a[i] · ( … (s[0, n]·acc[i, 0, n]) + s[1, n]·acc[i, 1, n] … )     (float32, g in order)

q: weight codes in [0, 15] (a signed symmetric code w ∈ [−8, 7] is q = w + 8 with z = 8), z: their zero
points per group and column, s: weight scales per group and column (one group of K rows = per channel);
a: activation codes as int8, z_a and s_a the row's (per-token) zero point and scale. The integer sum is
what the hardware computes without rounding; the float part is defined operation by operation (each
product rounded, then added) so that a kernel that keeps this order matches it exactly.

The kernels split the integer sum so that the 4-bit codes are multiplied as they are:

    acc = Σ q·a − z·Σ_{k∈g} a − z_a·Σ_{k∈g} (q − z)          (`row_group_sums`, `weight_group_sums`)

|acc| ≤ group · 15 · 255, far inside int32 for any group a layer has.

8-bit weights are the same layer with codes q ∈ [0, 255] (`bits=8`; a signed code w ∈ [−128, 127] is q = w + 128
with z + 128): |acc| ≤ group · 255 · 255, inside int32 for groups up to 33,000 rows.
"""

from __future__ import annotations

import numpy as np

__all__ = ["int4_matmul_reference", "row_group_sums", "weight_group_sums", "check_codes"]


def check_codes(q: np.ndarray, zero: np.ndarray, group: int, bits: int = 4) -> None:
    """ValueError unless q [K, N] holds `bits`-bit codes, K is a multiple of `group` and zero is [K/group, N]."""
    k, n = q.shape
    if bits not in (4, 8):
        raise ValueError(f"weight codes have 4 or 8 bits, not {bits}")
    if group <= 0 or k % group:
        raise ValueError(f"K = {k} is not a multiple of the group size {group}")
    if q.size and (q.min() < 0 or q.max() > 2**bits - 1):
        raise ValueError(f"{bits}-bit weight codes must lie in [0, {2**bits - 1}]")
    if zero.shape != (k // group, n):
        raise ValueError(f"zero points must be [K/group, N] = {(k // group, n)}, got {zero.shape}")


def row_group_sums(a: np.ndarray, group: int) -> np.ndarray:
    """Σ_{k ∈ g} a[i, k] as int32 [M, K/group]."""
    m, k = a.shape
    return a.astype(np.int32).reshape(m, k // group, group).sum(axis=2, dtype=np.int32)


def weight_group_sums(q: np.ndarray, zero: np.ndarray, group: int) -> np.ndarray:
    """Σ_{k ∈ g} (q[k, n] − z[g, n]) as int32 [K/group, N]: what an activation zero point multiplies."""
    k, n = q.shape
    return (q.astype(np.int32).reshape(k // group, group, n).sum(axis=1) - group * zero.astype(np.int32)).astype(
        np.int32
    )


def int4_matmul_reference(
    a: np.ndarray,
    q: np.ndarray,
    zero: np.ndarray,
    scale: np.ndarray,
    act_scale: np.ndarray,
    act_zero: np.ndarray | None = None,
    group: int | None = None,
    bits: int = 4,
) -> np.ndarray:
    """out [M, N] float32 of the module docstring. a int8 [M, K]; q [K, N] codes of `bits` bits; zero int [G, N];
    scale float32 [G, N]; act_scale float32 [M]; act_zero int [M] or None (0); group K/G (default: K/len(zero))."""
    k, n = q.shape
    group = group or k // zero.shape[0]
    check_codes(q, zero, group, bits)
    centred = a.astype(np.int64) - (0 if act_zero is None else np.asarray(act_zero, np.int64)[:, None])
    weights = q.astype(np.int64).reshape(k // group, group, n) - zero.astype(np.int64)[:, None, :]
    out = np.zeros((a.shape[0], n), np.float32)
    for g in range(k // group):
        acc = centred[:, g * group : (g + 1) * group] @ weights[g]
        assert np.abs(acc).max(initial=0) < 2**31
        out = out + scale[g].astype(np.float32) * acc.astype(np.float32)
    return out * np.asarray(act_scale, np.float32)[:, None]
