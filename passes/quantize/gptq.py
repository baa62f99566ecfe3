"""GPTQ rounding (Frantar et al. 2023) of one linear's weight, symmetric per output channel, float64.

For y = x W with W ∈ R^{K×N} (input channels K), the layer loss of a rounded Ŵ on calibration rows X is
‖X W − X Ŵ‖²_F = Σ_n (w_n − ŵ_n)ᵀ H (w_n − ŵ_n),  H = XᵀX (`calibration.gram`).
Every output channel n shares H, so GPTQ rounds input channels one at a time, in order π, and after
rounding channel k moves the rounding error onto the channels not yet rounded with the optimal
(OBS) update:  e = (w_k − ŵ_k) / U_kk,  w_{j} ← w_{j} − e · U_kj  for j after k,
where U is the upper Cholesky factor of H⁻¹ (in π order), i.e. H⁻¹ = Uᵀ U.

Details, as in the reference implementation and QuaRot's use of it:
* dead inputs (H_kk = 0: the channel never fires) get H_kk = 1 and weight 0;
* damping H ← H + λ·mean(diag H)·I, λ = `damp` = 0.01;
* `act_order`: π sorts inputs by decreasing H_kk (the most active channels are rounded first, while the
  remaining ones can still absorb their error);
* the update is applied lazily in blocks of `block` columns (same result, BLAS-3 speed);
* the grid is fixed before rounding: per channel step s_n (from the caller: max|w_n| or its MSE-clipped
  threshold over 2^(b−1) − 1), codes clipped to ±(2^(b−1) − 1).

With H = I (uncorrelated unit inputs) U = I/√(1+λ) is diagonal, nothing propagates and GPTQ equals
round-to-nearest; the gain comes from input correlations, which rotations and LayerNorm outputs have.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

__all__ = ["gptq_codes", "layer_loss"]


def _upper_inverse_cholesky(hessian: np.ndarray) -> np.ndarray:
    """U upper triangular with H⁻¹ = Uᵀ U."""
    inverse = scipy.linalg.cho_solve(scipy.linalg.cho_factor(hessian), np.eye(len(hessian)))
    return scipy.linalg.cholesky(inverse, lower=False)


def gptq_codes(
    weight: np.ndarray,
    hessian: np.ndarray,
    step: np.ndarray,
    bits: int,
    *,
    damp: float = 0.01,
    block: int = 128,
    act_order: bool = True,
) -> np.ndarray:
    """Integer codes (K×N, same layout as `weight`) with Ŵ = codes · step[None, :].

    Args:
        weight: K×N float weight (input channels first, as MatMul's B).
        hessian: K×K Σ xᵀx of the linear's input.
        step: N per-output-channel quantization steps (> 0).
        bits: weight bits; codes lie in ±(2^(b−1) − 1).
    """
    w = np.array(weight, dtype=np.float64).T  # rows = output channels, columns = inputs
    h = np.array(hessian, dtype=np.float64)
    k = h.shape[0]
    if w.shape[1] != k or h.shape != (k, k):
        raise ValueError(f"gptq: weight {weight.shape} does not match Hessian {hessian.shape}")
    step = np.asarray(step, dtype=np.float64).reshape(-1, 1)
    top = 2 ** (bits - 1) - 1
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    w, h = w[:, order], h[np.ix_(order, order)]
    h[np.diag_indices(k)] += damp * np.mean(np.diag(h))
    upper = _upper_inverse_cholesky(h)
    codes = np.zeros_like(w)
    for start in range(0, k, block):
        stop = min(start + block, k)
        part = w[:, start:stop].copy()
        errors = np.zeros_like(part)
        for i in range(stop - start):
            column = part[:, i : i + 1]
            q = np.clip(np.rint(column / step), -top, top)
            codes[:, start + i] = q[:, 0]
            error = (column - q * step) / upper[start + i, start + i]
            part[:, i:] -= error * upper[start + i, start + i : stop]
            errors[:, i] = error[:, 0]
        w[:, stop:] -= errors @ upper[start:stop, stop:]
    inverse = np.empty_like(order)
    inverse[order] = np.arange(k)
    return codes[:, inverse].T


def layer_loss(weight: np.ndarray, rounded: np.ndarray, hessian: np.ndarray) -> float:
    """tr((W − Ŵ)ᵀ H (W − Ŵ)) = ‖X W − X Ŵ‖²_F for K×N weights."""
    diff = np.asarray(weight, np.float64) - np.asarray(rounded, np.float64)
    return float(np.sum(diff * (hessian @ diff)))
