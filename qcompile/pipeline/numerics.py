"""Numeric comparison of model outputs: SQNR and tolerance checks.

``SQNR(ref, test) = 10·log10(Σ ref² / Σ (ref − test)²)`` in dB (∞ when identical).
A float-equivalent pass passes the check when, for every output, ``max|test − ref| ≤ rtol·max|ref| + atol``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["sqnr_db", "max_abs_error", "within_tolerance", "TOLERANCES"]

# (rtol, atol) per numerics class; relative to the output's largest magnitude.
TOLERANCES = {
    "EXACT": (1e-6, 1e-7),
    "EXACT_IN_REALS": (1e-4, 1e-6),
}


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of `test` against `reference`, in dB."""
    reference = np.asarray(reference, dtype=np.float64)
    noise = float(np.sum((reference - np.asarray(test, dtype=np.float64)) ** 2))
    signal = float(np.sum(reference**2))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * float(np.log10(signal / noise))


def max_abs_error(reference: np.ndarray, test: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(reference, np.float64) - np.asarray(test, np.float64)), initial=0.0))


def within_tolerance(reference: np.ndarray, test: np.ndarray, rtol: float, atol: float) -> bool:
    if reference.shape != test.shape:
        return False
    scale = float(np.max(np.abs(reference), initial=0.0))
    return max_abs_error(reference, test) <= rtol * scale + atol
