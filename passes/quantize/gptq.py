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

Per-group grids (`gptq_grouped`, weight-only LLM recipes such as w4a16 g128): each group of G consecutive
input channels has its own scale (and zero point) per output channel. Swept in natural order, a group's
grid is fit from the weights as the OBS updates of the earlier columns left them, when the sweep reaches the
group's first column (the reference's default); with `act_order` all grids are fit from the original
weights first (`static_groups`), so the groups stay contiguous for export.

With H = I (uncorrelated unit inputs) U = I/√(1+λ) is diagonal, nothing propagates and GPTQ equals
round-to-nearest; the gain comes from input correlations, which rotations and LayerNorm outputs have.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import scipy.linalg

__all__ = ["ColumnGrid", "gptq_codes", "gptq_grouped", "layer_loss"]


def _upper_inverse_cholesky(hessian: np.ndarray) -> np.ndarray:
    """U upper triangular with H⁻¹ = Uᵀ U."""
    inverse = scipy.linalg.cho_solve(scipy.linalg.cho_factor(hessian), np.eye(len(hessian)))
    return scipy.linalg.cholesky(inverse, lower=False)


@dataclasses.dataclass
class ColumnGrid:
    """The quantizer of one input channel's N weights: q = clip(rint(w / s) + z, lo, hi), ŵ = (q − z)·s."""

    scale: np.ndarray  # [N] float64 (> 0)
    zero: np.ndarray  # [N] float64 integers (0 for symmetric signed grids)
    lo: int
    hi: int

    def _along(self, array: np.ndarray, like: np.ndarray) -> np.ndarray:
        return array.reshape((-1,) + (1,) * (np.ndim(like) - 1))  # [N] against [N] or [N, columns]

    def codes(self, column: np.ndarray) -> np.ndarray:
        return np.clip(
            np.rint(column / self._along(self.scale, column)) + self._along(self.zero, column), self.lo, self.hi
        )

    def values(self, codes: np.ndarray) -> np.ndarray:
        return (codes - self._along(self.zero, codes)) * self._along(self.scale, codes)


def _prepare(weight: np.ndarray, hessian: np.ndarray, damp: float, act_order: bool):
    w = np.array(weight, dtype=np.float64).T  # rows = output channels, columns = inputs
    h = np.array(hessian, dtype=np.float64)
    k = h.shape[0]
    if w.shape[1] != k or h.shape != (k, k):
        raise ValueError(f"gptq: weight {weight.shape} does not match Hessian {hessian.shape}")
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    w, h = w[:, order], h[np.ix_(order, order)]
    h[np.diag_indices(k)] += damp * np.mean(np.diag(h))
    return w, order, _upper_inverse_cholesky(h)


def _sweep(
    w: np.ndarray,
    upper: np.ndarray,
    grid_of: Callable[[int], ColumnGrid],
    block: int,
    on_block: Callable[[int, np.ndarray], None] | None = None,
) -> np.ndarray:
    """The OBS sweep over the (permuted) columns of w (N×K, updated in place); codes N×K. `on_block(start, w)`
    is called at each block's first column, when w holds every update so far (grouped grids are fit there)."""
    k = w.shape[1]
    codes = np.zeros_like(w)
    for start in range(0, k, block):
        stop = min(start + block, k)
        if on_block is not None:
            on_block(start, w)
        part = w[:, start:stop].copy()
        errors = np.zeros_like(part)
        for i in range(stop - start):
            grid = grid_of(start + i)
            column = part[:, i]
            q = grid.codes(column)
            codes[:, start + i] = q
            error = (column - grid.values(q)) / upper[start + i, start + i]
            part[:, i:] -= error[:, None] * upper[start + i, start + i : stop]
            errors[:, i] = error
        w[:, stop:] -= errors @ upper[start:stop, stop:]
    return codes


def _unpermute(codes: np.ndarray, order: np.ndarray) -> np.ndarray:
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return codes[:, inverse].T


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
    w, order, upper = _prepare(weight, hessian, damp, act_order)
    top = 2 ** (bits - 1) - 1
    grid = ColumnGrid(np.asarray(step, dtype=np.float64).reshape(-1), np.zeros(w.shape[0]), -top, top)
    return _unpermute(_sweep(w, upper, lambda _: grid, block), order)


def gptq_grouped(
    weight: np.ndarray,
    hessian: np.ndarray,
    group_size: int,
    fit: Callable[[np.ndarray], ColumnGrid],
    *,
    damp: float = 0.01,
    act_order: bool = False,
) -> tuple[np.ndarray, list[ColumnGrid]]:
    """GPTQ onto per-group grids along K (groups of `group_size` consecutive input channels, the last one
    possibly shorter); returns (codes K×N including zero points, the grid of each group).

    `fit(columns)` maps a group's weights (N×G float64) to its grid. Without `act_order` a group's grid is fit
    when the sweep reaches its first column, from the weights as the earlier columns' errors left them (the
    reference's behaviour); with `act_order` the columns are swept by decreasing H_kk and every grid is fit
    up front from the original weights (the reference's `static_groups`), so that groups stay contiguous.
    The lazy update blocks are the groups (block = G, the reference's 128 = 128), so a group's first column
    is a block start, where every earlier error has been applied.
    """
    k = weight.shape[0]
    groups = -(-k // group_size)
    original = np.asarray(weight, dtype=np.float64).T
    grids: list[ColumnGrid | None] = [None] * groups
    if act_order:
        grids = [fit(original[:, g * group_size : (g + 1) * group_size]) for g in range(groups)]
    w, order, upper = _prepare(weight, hessian, damp, act_order)

    def on_block(start: int, current: np.ndarray) -> None:  # natural order: position i is input channel i
        grids[start // group_size] = fit(current[:, start : start + group_size])

    codes = _sweep(w, upper, lambda i: grids[order[i] // group_size], group_size, None if act_order else on_block)
    return _unpermute(codes, order), grids


def layer_loss(weight: np.ndarray, rounded: np.ndarray, hessian: np.ndarray) -> float:
    """tr((W − Ŵ)ᵀ H (W − Ŵ)) = ‖X W − X Ŵ‖²_F for K×N weights."""
    diff = np.asarray(weight, np.float64) - np.asarray(rounded, np.float64)
    return float(np.sum(diff * (hessian @ diff)))
