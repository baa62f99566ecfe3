"""RepQ-ViT's quantile + MSE scale search (METHODS.md §3.1), per tensor or per channel.

Uniform asymmetric b-bit quantizer on [lo, hi]: ``Δ = (hi − lo) / (2^b − 1)``, ``z = round(−lo / Δ)``,
``x̂ = (clip(round(x / Δ) + z, 0, 2^b − 1) − z) · Δ``. Candidates: for p in {0.999, 0.9999, 0.99999},
``hi = quantile(x, p)``, ``lo = quantile(x, 1 − p)``; the candidate with the smallest mean squared error
``mean((x − x̂)²)`` wins (per channel, independently, in channel-wise mode). Raw min/max is never used.

log√2 quantizer (post-Softmax): codes ``q = round(−2 log2(x / Δ))``; candidates ``Δ = quantile(x, p)`` for
the same p; the smallest mean squared error of the `QuantSpec(kind="log_sqrt2")` fake-quantizer wins.

All arithmetic is float64; samples come from `qcompile.calibration.samplers`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["QUANTILES", "ChannelParams", "uniform_search", "log_sqrt2_search"]

QUANTILES = (0.999, 0.9999, 0.99999)
MIN_STEP = 1e-8


class ChannelParams:
    """Chosen per-channel (or per-tensor, shape ()) ranges and their b-bit step and zero point."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray, bits: int) -> None:
        self.bits = bits
        self.levels = 2**bits - 1
        self.lo = np.minimum(lo, 0.0)
        self.hi = np.maximum(hi, 0.0)
        self.scale = np.maximum((self.hi - self.lo) / self.levels, MIN_STEP)
        self.zero_point = np.clip(np.rint(-self.lo / self.scale), 0, self.levels)

    def fake_quantize(self, x: np.ndarray) -> np.ndarray:
        q = np.clip(np.rint(x / self.scale) + self.zero_point, 0, self.levels)
        return (q - self.zero_point) * self.scale


def uniform_search(x: np.ndarray, bits: int, per_channel: bool, quantiles=QUANTILES) -> ChannelParams:
    """Best quantile candidate by MSE. `x` is [N, C] when `per_channel` (search per column), else any shape."""
    x = np.asarray(x, dtype=np.float64)
    if not per_channel:
        x = x.reshape(-1, 1)
    best: ChannelParams | None = None
    best_error = None
    for p in quantiles:
        hi = np.quantile(x, p, axis=0)
        lo = np.quantile(x, 1.0 - p, axis=0)
        candidate = ChannelParams(lo, hi, bits)
        error = np.mean((x - candidate.fake_quantize(x)) ** 2, axis=0)
        if best is None:
            best, best_error = candidate, error
            continue
        better = error < best_error
        best = ChannelParams(np.where(better, candidate.lo, best.lo), np.where(better, candidate.hi, best.hi), bits)
        best_error = np.where(better, error, best_error)
    assert best is not None
    if not per_channel:
        best = ChannelParams(best.lo[0], best.hi[0], bits)
    return best


def log_sqrt2_search(x: np.ndarray, bits: int, quantiles=QUANTILES) -> float:
    """Δ of the b-bit log√2 quantizer for non-negative samples `x`, by quantile candidates and MSE."""
    from qcompile.ir.quant_meta import QuantSpec

    x = np.asarray(x, dtype=np.float64).reshape(-1)
    best_delta, best_error = None, np.inf
    for p in quantiles:
        delta = float(max(np.quantile(x, p), MIN_STEP))
        spec = QuantSpec(bits, False, np.float32(delta), np.int32(0), None, kind="log_sqrt2")
        error = float(np.mean((x - spec.fake_quantize(x).astype(np.float64)) ** 2))
        if error < best_error:
            best_delta, best_error = delta, error
    assert best_delta is not None
    return best_delta
