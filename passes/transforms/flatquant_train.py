"""FlatQuant's trainable pieces in torch (Sun et al. 2024; METHODS.md §8): Kronecker transforms, LWC, LAC.

For a site x read by linears y_i = x·W_i (W_i [K, N], K = n = n1·n2), the transform is

    x' = (x ⊙ c)·(P1 ⊗ P2),     W_i' = (P1 ⊗ P2)⁻¹·diag(1/c)·W_i,     so x'·W_i' = x·W_i in reals.

Each factor is P = U·diag(σ)·Vᵀ with U, V orthogonal (torch's Cayley parametrization), so the inverse is
V·diag(1/σ)·Uᵀ without a solve; (P1 ⊗ P2)⁻¹ = P1⁻¹ ⊗ P2⁻¹. The online product runs as in
`online_ops.kronecker_rotate`: X = x reshaped [n1, n2], x' = P1ᵀ·X·P2. At the start U = the initial factor
(a randomized Hadamard, the identity, or a random orthogonal matrix), V = I, σ = 1.

During training the quantized path is
    x̂ = Q_a(x'; r),  r = sigmoid(β_a)   (LAC: the per-token range scaled by one learned ratio per site),
    Ŵ = Q_w(W'; ρ),  ρ = sigmoid(β_w)   (LWC: one learned ratio per output channel),
with straight-through rounding; Q_a is `QuantSpec.per_token`'s arithmetic (asymmetric: [min(x,0)·r,
max(x,0)·r] on 2^b − 1 steps; symmetric: absmax·r on ±(2^(b−1) − 1)), Q_w symmetric per output channel
(absmax·ρ / (2^(b−1) − 1), codes in [−2^(b−1), 2^(b−1) − 1]). β's start at 4 (ratio 0.982), as in the paper.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrizations

__all__ = [
    "Factor",
    "SiteTransform",
    "kron_apply",
    "fake_quant_tokens",
    "fake_quant_weight",
    "round_ste",
]

INITIAL_BETA = 4.0


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def kron_apply(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x·(a ⊗ b) over the last axis: reshape to [.., n1, n2], then aᵀ·X·b."""
    shape = x.shape
    grid = x.reshape(-1, a.shape[0], b.shape[0])
    return torch.matmul(a.transpose(0, 1), torch.matmul(grid, b)).reshape(shape)


def fake_quant_tokens(x: torch.Tensor, bits: int, symmetric: bool, ratio: torch.Tensor | float) -> torch.Tensor:
    """Dynamic per-row (last axis) fake quantization with the range scaled by `ratio`."""
    if symmetric:
        top = float(2 ** (bits - 1) - 1)
        scale = torch.clamp_min(x.abs().amax(-1, keepdim=True) * ratio / top, 1e-12)
        return torch.clamp(round_ste(x / scale), -top, top) * scale
    levels = float(2**bits - 1)
    lo = torch.clamp_max(x.amin(-1, keepdim=True), 0.0) * ratio
    hi = torch.clamp_min(x.amax(-1, keepdim=True), 0.0) * ratio
    scale = torch.clamp_min((hi - lo) / levels, 1e-12)
    zero = torch.clamp(round_ste(-lo / scale), 0.0, levels)
    return (torch.clamp(round_ste(x / scale) + zero, 0.0, levels) - zero) * scale


def fake_quant_weight(w: torch.Tensor, bits: int, in_axis: int, ratio: torch.Tensor) -> torch.Tensor:
    """Symmetric per-output-channel fake quantization; `ratio` has one entry per output channel."""
    top = float(2 ** (bits - 1) - 1)
    absmax = w.abs().amax(dim=in_axis, keepdim=True)
    shape = [1, 1]
    shape[1 - in_axis] = -1
    scale = torch.clamp_min(absmax * ratio.reshape(shape) / top, 1e-12)
    return torch.clamp(round_ste(w / scale), -top - 1.0, top) * scale


class Factor(nn.Module):
    """P = U·diag(σ)·Vᵀ with orthogonal U, V; starts at P = `initial` (orthogonal)."""

    def __init__(self, initial: np.ndarray) -> None:
        super().__init__()
        size = initial.shape[0]
        self.u = parametrizations.orthogonal(nn.Linear(size, size, bias=False), orthogonal_map="cayley")
        self.v = parametrizations.orthogonal(nn.Linear(size, size, bias=False), orthogonal_map="cayley")
        with torch.no_grad():
            self.u.weight = torch.as_tensor(initial, dtype=torch.float32)
            self.v.weight = torch.eye(size)
        self.sigma = nn.Parameter(torch.ones(size))

    def matrix(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        u, v, sigma = self.u.weight.to(dtype), self.v.weight.to(dtype), self.sigma.to(dtype)
        return u * sigma @ v.transpose(0, 1)

    def inverse(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        u, v, sigma = self.u.weight.to(dtype), self.v.weight.to(dtype), self.sigma.to(dtype)
        return v / sigma @ u.transpose(0, 1)


class SiteTransform(nn.Module):
    """The transform of one site with its LAC ratio and the LWC ratios of the linears reading it."""

    def __init__(
        self,
        left: np.ndarray,
        right: np.ndarray,
        scale: np.ndarray | None,
        out_channels: list[int],
        act_bits: int,
        act_symmetric: bool,
        weight_bits: int,
    ) -> None:
        super().__init__()
        self.left, self.right = Factor(left), Factor(right)
        channels = left.shape[0] * right.shape[0]
        initial = np.ones(channels) if scale is None else scale
        self.scale = nn.Parameter(torch.as_tensor(initial, dtype=torch.float32), requires_grad=scale is not None)
        self.act_beta = nn.Parameter(torch.tensor(INITIAL_BETA))
        self.weight_betas = nn.ParameterList(nn.Parameter(torch.full((n,), INITIAL_BETA)) for n in out_channels)
        self.act_bits, self.act_symmetric, self.weight_bits = act_bits, act_symmetric, weight_bits
        self.quantize = True

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return kron_apply(x * self.scale, self.left.matrix(), self.right.matrix())

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        """x̂ = Q_a(x'), or x' when quantization is off (the equivalence check)."""
        moved = self.transform(x)
        if not self.quantize:
            return moved
        return fake_quant_tokens(moved, self.act_bits, self.act_symmetric, torch.sigmoid(self.act_beta))

    def transformed_weight(self, w: torch.Tensor, in_axis: int) -> torch.Tensor:
        """W' = (P1 ⊗ P2)⁻¹·diag(1/c)·W (input channels along `in_axis`)."""
        a_inv_t = self.left.inverse().transpose(0, 1)
        b_inv_t = self.right.inverse().transpose(0, 1)
        if in_axis == 0:
            return kron_apply((w / self.scale[:, None]).transpose(0, 1), a_inv_t, b_inv_t).transpose(0, 1)
        return kron_apply(w / self.scale[None, :], a_inv_t, b_inv_t)

    def weight(self, w: torch.Tensor, in_axis: int, index: int) -> torch.Tensor:
        moved = self.transformed_weight(w, in_axis)
        if not self.quantize:
            return moved
        return fake_quant_weight(moved, self.weight_bits, in_axis, torch.sigmoid(self.weight_betas[index]))

    def clip_ratio(self) -> float:
        return float(torch.sigmoid(self.act_beta.detach()))

    def factors64(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(P1, P2, P1⁻¹, P2⁻¹, c) in float64, for folding."""
        with torch.no_grad():
            left, right, f64 = self.left, self.right, torch.float64
            matrices = (left.matrix(f64), right.matrix(f64), left.inverse(f64), right.inverse(f64), self.scale.to(f64))
            return tuple(m.numpy() for m in matrices)
