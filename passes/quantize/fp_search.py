"""LLM-FP4's search (Liu et al. 2023; METHODS.md §10.1) for one activation site and the linears that read it.

A site is an activation X [R, K] (calibration rows) read by linears Y_l = X W_l (W_l [K, N_l]). For a
floating-point format F (`qcompile.math.fp_formats`, largest magnitude F.max), every quantizer is
x̂ = s · fp_round(x / s), and a scale is written as a ratio γ of its max-based start (γ = 1: the largest
|value| lands on F.max; LLM-FP4 searches the real-valued exponent bias b, s = 2^(−b), which is the same
family of scales):

* weights, per output channel n:  s_n = γ_n · max_k |W[k, n]| / F.max;
* activations, per tensor (static):  s = γ · max |X| / F.max, optionally with the paper's pre-shifted
  per-channel exponent biases: channel c uses s · 2^(−ρ_c), ρ_c = clamp(round(log2(max|X| / max|X_c|)),
  0, 2^E − 1) (an integer shift, so that a deployment folds 2^(−ρ_c) into row c of W and the matmul sees one
  scale; here it is kept as a per-channel activation scale, as the reference code simulates it);
* activations per token (dynamic): each row's s = r · max|x_row| / F.max, r a clip ratio.

The objective is the output error Σ_l ‖X W_l − X̂ Ŵ_l‖²_F on the calibration rows. Starting from γ = 1
everywhere, `rounds` alternations search each weight channel's γ_n (separable: one matmul per candidate
gives every channel's error) and then the activation's γ (or r), each over its candidate list. With several
formats, the search runs for each and the site takes the format with the least error ("the format searched per
layer"; a site's linears share one activation quantizer, hence one format).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from qcompile.ir.quant_meta import TOKEN_MIN_SCALE, QuantSpec
from qcompile.math.fp_formats import fp_format

__all__ = ["SiteChoice", "search_site", "WEIGHT_RATIOS", "ACT_RATIOS", "TOKEN_RATIOS", "channel_shifts"]

WEIGHT_RATIOS = tuple(float(r) for r in np.round(np.linspace(0.3, 1.2, 19), 4))
ACT_RATIOS = WEIGHT_RATIOS
TOKEN_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5)


@dataclasses.dataclass
class SiteChoice:
    """The chosen format and quantizers of one site: `act_spec` for X, `weight_specs[l]` for W_l."""

    fmt: str
    act_spec: QuantSpec
    weight_specs: list[QuantSpec]
    error: float  # Σ_l ‖X W_l − X̂ Ŵ_l‖² / Σ_l ‖X W_l‖² with the chosen quantizers
    errors_by_format: dict[str, float]


def channel_shifts(x: np.ndarray, exponent_bits: int) -> np.ndarray:
    """ρ_c = clamp(round(log2(max|X| / max|X_c|)), 0, 2^E − 1) (0 for an all-zero channel)."""
    channel = np.abs(x).max(axis=0).astype(np.float64)
    top = channel.max()
    with np.errstate(divide="ignore"):
        shifts = np.where(channel > 0, np.rint(np.log2(top / np.where(channel > 0, channel, 1.0))), 0.0)
    return np.clip(shifts, 0, 2**exponent_bits - 1)


def _weight_fq(w: np.ndarray, fmt_name: str, ratios: np.ndarray) -> tuple[np.ndarray, QuantSpec]:
    fmt = fp_format(fmt_name)
    absmax = np.abs(w).max(axis=0)
    scale = np.maximum(ratios * absmax / fmt.max_value, TOKEN_MIN_SCALE).astype(np.float32)
    spec = QuantSpec.fp(fmt_name, scale, axis=1)
    return spec.fake_quantize(w), spec


def _act_spec(x: np.ndarray, fmt_name: str, mode: str, ratio: float, shifts: np.ndarray | None) -> QuantSpec:
    if mode == "token":
        return QuantSpec.fp_per_token(fmt_name, ratio)
    fmt = fp_format(fmt_name)
    scale = max(ratio * float(np.abs(x).max()) / fmt.max_value, float(TOKEN_MIN_SCALE))
    if shifts is None:
        return QuantSpec.fp(fmt_name, np.float32(scale))
    return QuantSpec.fp(fmt_name, (scale * np.exp2(-shifts)).astype(np.float32), axis=-1)


def _search_format(x, weights, targets, fmt_name, mode, shift, rounds):
    fmt = fp_format(fmt_name)
    shifts = channel_shifts(x, fmt.exponent_bits) if shift and mode == "tensor" else None
    act_ratio = 1.0
    act_spec = _act_spec(x, fmt_name, mode, act_ratio, shifts)
    x_hat = act_spec.fake_quantize(x)
    w_ratios = [np.ones(w.shape[1]) for w in weights]
    quantized = [_weight_fq(w, fmt_name, r) for w, r in zip(weights, w_ratios)]
    w_hats, specs = [q[0] for q in quantized], [q[1] for q in quantized]
    for _ in range(rounds):
        for index, (w, target) in enumerate(zip(weights, targets)):
            best = np.full(w.shape[1], np.inf)
            for ratio in WEIGHT_RATIOS:
                candidate, _ = _weight_fq(w, fmt_name, np.full(w.shape[1], ratio))
                error = ((target - x_hat @ candidate) ** 2).sum(axis=0)
                better = error < best
                best[better], w_ratios[index][better] = error[better], ratio
            w_hats[index], specs[index] = _weight_fq(w, fmt_name, w_ratios[index])
        best_error = np.inf
        for ratio in TOKEN_RATIOS if mode == "token" else ACT_RATIOS:
            candidate = _act_spec(x, fmt_name, mode, ratio, shifts).fake_quantize(x)
            error = sum(float(((t - candidate @ w_hat) ** 2).sum()) for t, w_hat in zip(targets, w_hats))
            if error < best_error:
                best_error, act_ratio = error, ratio
        act_spec = _act_spec(x, fmt_name, mode, act_ratio, shifts)
        x_hat = act_spec.fake_quantize(x)
    error = sum(float(((t - x_hat @ w_hat) ** 2).sum()) for t, w_hat in zip(targets, w_hats))
    return error, act_spec, specs


def search_site(
    x: np.ndarray,
    weights: list[np.ndarray],
    formats: tuple[str, ...],
    mode: str = "tensor",
    shift: bool = True,
    rounds: int = 2,
) -> SiteChoice:
    """Search formats, activation and weight scales of one site (module docstring). `x` [R, K] float32,
    `weights` [K, N_l] float32; `mode` "tensor" or "token"; `rounds` 0 keeps the max-based scales."""
    x = np.asarray(x, dtype=np.float32)
    weights = [np.asarray(w, dtype=np.float32) for w in weights]
    targets = [x @ w for w in weights]
    norm = sum(float((t.astype(np.float64) ** 2).sum()) for t in targets) or 1.0
    results = {f: _search_format(x, weights, targets, f, mode, shift, rounds) for f in formats}
    chosen = min(results, key=lambda f: results[f][0])
    error, act_spec, weight_specs = results[chosen]
    return SiteChoice(
        chosen, act_spec, weight_specs, error / norm, {f: round(r[0] / norm, 6) for f, r in results.items()}
    )
