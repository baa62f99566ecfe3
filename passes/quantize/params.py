"""Uniform quantizer parameters from ranges.

Asymmetric (activations), b bits, unsigned codes 0..2^b−1, range widened to contain 0 so that 0 is
exactly representable:  ``s = (hi − lo) / (2^b − 1)``,  ``z = clamp(round(−lo / s), 0, 2^b − 1)``.

Symmetric per-channel (weights), b bits: ``s_c = max|W_c| / (2^(b−1) − 1)``; codes lie in
``[−(2^(b−1) − 1), 2^(b−1) − 1]`` (the −2^(b−1) code is left unused so the grid is symmetric). Stored
either as signed codes with zero point 0 (int8 container) or shifted by 2^(b−1) into unsigned codes
(uint8 container, zero point 2^(b−1)); both dequantize to exactly the same real values.

Asymmetric groups with `search="mse"` shrink the group's range [lo, hi] to r·[lo, hi] with the r of the same grid
that minimizes the group's squared error (GPTQ's reference quantizer searches the same way).

With `search="mse"` each channel's clipping threshold is T_c = r·max|W_c|, r from the grid 1.00, 0.99, …,
0.20 (QuaRot's `w_clip` grid), choosing per channel the r with the smallest Σ (W_c − Q(W_c))² (float64).
At 4 bits clipping the few largest weights of a row buys a finer grid for all the others.

Per-group weights (`grouped_weight_spec`), b bits, groups of G consecutive elements along the reduction axis
(K of MatMul W[K, N]) per output channel, one scale (and zero point) per group, float64; when G does not
divide K the last group is shorter (its statistics are those of its K mod G elements):
symmetric as above with max|W_g| (or the MSE-clipped threshold) per group; asymmetric (unsigned codes
0..L, L = 2^b − 1, the group's range widened to contain 0 so that 0 stays exact):
``s_g = (max(W_g, 0) − min(W_g, 0)) / L``,  ``z_g = clamp(round(−min(W_g, 0) / s_g), 0, L)``.
"""

from __future__ import annotations

import numpy as np

from qcompile.ir.quant_meta import QuantSpec

__all__ = ["asymmetric_spec", "symmetric_per_channel_spec", "grouped_weight_spec", "MIN_SCALE"]

MIN_SCALE = 1e-12


def asymmetric_spec(lo: float, hi: float, bits: int) -> QuantSpec:
    """Per-tensor unsigned affine quantizer covering [min(lo, 0), max(hi, 0)]."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    levels = 2**bits - 1
    scale = max((hi - lo) / levels, MIN_SCALE)
    zero_point = int(np.clip(np.rint(-lo / scale), 0, levels))
    return QuantSpec(bits=bits, signed=False, scale=np.float32(scale), zero_point=np.int32(zero_point))


CLIP_RATIOS = tuple(np.round(np.arange(1.0, 0.195, -0.01), 2))
SEARCHES = ("minmax", "mse")


def _mse_absmax(weight: np.ndarray, reduce_axes: tuple[int, ...], absmax: np.ndarray, bits: int) -> np.ndarray:
    """Per-slice clipping threshold r·max|W| minimizing the squared rounding + clipping error."""
    top = 2 ** (bits - 1) - 1
    best, best_error = absmax, None
    for ratio in CLIP_RATIOS:
        threshold = np.maximum(absmax * ratio, MIN_SCALE)
        step = np.expand_dims(threshold / top, reduce_axes) if reduce_axes else threshold / top
        error = np.sum((weight - np.clip(np.rint(weight / step), -top, top) * step) ** 2, axis=reduce_axes)
        if best_error is None:
            best, best_error = threshold, error
            continue
        better = error < best_error
        best, best_error = np.where(better, threshold, best), np.where(better, error, best_error)
    return best


def _mse_range(
    grouped: np.ndarray, inner: int, lo: np.ndarray, hi: np.ndarray, levels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-group range r·[lo, hi] (r from CLIP_RATIOS) minimizing the squared error of the asymmetric grid."""
    best_lo, best_hi, best_error = lo, hi, None
    for ratio in CLIP_RATIOS:
        trial_lo, trial_hi = lo * ratio, hi * ratio
        scale = np.maximum((trial_hi - trial_lo) / levels, MIN_SCALE)
        zero = np.clip(np.rint(-trial_lo / scale), 0, levels)
        s, z = np.expand_dims(scale, inner), np.expand_dims(zero, inner)
        error = np.sum((grouped - (np.clip(np.rint(grouped / s) + z, 0, levels) - z) * s) ** 2, axis=inner)
        if best_error is None:
            best_error = error
            continue
        better = error < best_error
        best_lo, best_hi = np.where(better, trial_lo, best_lo), np.where(better, trial_hi, best_hi)
        best_error = np.where(better, error, best_error)
    return best_lo, best_hi


def symmetric_per_channel_spec(
    weight: np.ndarray, axis: int | None, bits: int, unsigned_container: bool, search: str = "minmax"
) -> QuantSpec:
    """Symmetric quantizer with one scale per slice of `weight` along `axis`, or one scale when `axis` is
    None (computed in float64); `search` = "minmax" or "mse" (clipping search, see above)."""
    if search not in SEARCHES:
        raise ValueError(f"weight search must be one of {', '.join(SEARCHES)}, got {search}")
    weight64 = weight.astype(np.float64)
    if axis is None:
        reduce_axes = tuple(range(weight.ndim))
        absmax = np.max(np.abs(weight64), initial=0.0)
    else:
        axis = axis % weight.ndim
        reduce_axes = tuple(a for a in range(weight.ndim) if a != axis)
        absmax = np.max(np.abs(weight64), axis=reduce_axes)
    if search == "mse":
        absmax = _mse_absmax(weight64, reduce_axes if axis is not None else (), np.asarray(absmax), bits)
    scale = np.maximum(absmax / (2 ** (bits - 1) - 1), MIN_SCALE)
    zero = 2 ** (bits - 1) if unsigned_container else 0
    zero_point = np.full(np.shape(scale), zero, dtype=np.int32)
    return QuantSpec(
        bits=bits, signed=not unsigned_container, scale=np.asarray(scale, np.float32), zero_point=zero_point, axis=axis
    )


def grouped_weight_spec(
    weight: np.ndarray,
    axis: int,
    group_size: int,
    bits: int,
    symmetric: bool = True,
    unsigned_container: bool = True,
    search: str = "minmax",
) -> QuantSpec:
    """Per-group quantizer of `weight`: groups of `group_size` consecutive elements along `axis`, one scale per
    group and index of the other axes (see above). Symmetric specs are stored like the per-channel ones (uint8
    with zero point 2^(b−1), or int8 with 0); asymmetric ones are unsigned; `search="mse"` clips each group's
    range (both kinds). A ragged last group is allowed."""
    if search not in SEARCHES:
        raise ValueError(f"weight search must be one of {', '.join(SEARCHES)}, got {search}")
    axis = axis % weight.ndim
    length = weight.shape[axis]
    if group_size < 1:
        raise ValueError(f"the group size must be >= 1, got {group_size}")
    groups = -(-length // group_size)
    padding = [(0, 0)] * weight.ndim
    padding[axis] = (0, groups * group_size - length)  # zeros change no group's max|w|, min, max or MSE
    padded = np.pad(weight.astype(np.float64), padding)
    shape = (*weight.shape[:axis], groups, group_size, *weight.shape[axis + 1 :])
    grouped = padded.reshape(shape)
    inner = axis + 1
    if symmetric:
        absmax = np.max(np.abs(grouped), axis=inner)
        if search == "mse":
            absmax = _mse_absmax(grouped, (inner,), absmax, bits)
        scale = np.maximum(absmax / (2 ** (bits - 1) - 1), MIN_SCALE)
        zero = 2 ** (bits - 1) if unsigned_container else 0
        zero_point = np.full(scale.shape, zero, dtype=np.int32)
        signed = not unsigned_container
    else:
        levels = 2**bits - 1
        lo = np.minimum(np.min(grouped, axis=inner), 0.0)
        hi = np.maximum(np.max(grouped, axis=inner), 0.0)
        if search == "mse":
            lo, hi = _mse_range(grouped, inner, lo, hi, levels)
        scale = np.maximum((hi - lo) / levels, MIN_SCALE)
        zero_point = np.clip(np.rint(-lo / scale), 0, levels).astype(np.int32)
        signed = False
    return QuantSpec(
        bits=bits,
        signed=signed,
        scale=scale.astype(np.float32),
        zero_point=zero_point,
        axis=axis,
        group_size=group_size,
    )
