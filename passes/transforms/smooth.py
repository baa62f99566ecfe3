"""SmoothQuant scale folding (Xiao et al. 2023; METHODS.md §6).

For a norm output X (per-channel max |X_j| from calibration) feeding linears W_1..W_m (input channel j):

    s_j = max|X_j|^α / max_i max_k |W_i[j, k]|^(1−α),   clamped to ≥ 1e-5
    γ ← γ / s,  β ← β / s,   W_i[j, :] ← s_j · W_i[j, :]

so X/s · (diag(s) W) = X W: exact in real arithmetic (EXACT_IN_REALS). Activation outliers move into the
weights, which per-channel weight quantizers absorb. max|W_j| is taken over all linears sharing the norm
(q/k/v together), as the reference implementation does. Weight math is float64.

Only norm → linear sites are smoothed (LN → QKV, LN → FC1; on Llama-family decoders RMSNorm → q/k/v and
RMSNorm → gate/up, where only γ is divided), as in the reference code; the rest are reported in
`stats["skipped"]` with the reason.

Per-site α search (`smooth-scales:alpha=search`): for each site, a bounded uniform sample of X's rows
(`calibration.samplers.RowSampler`) is smoothed with every α of `ALPHA_GRID`, and the α minimizing the
relative error of the site's linear outputs under b-bit fake quantization,
Σ_i ‖X W_i − Q_a(X/s) Q_w(diag(s) W_i)‖² / Σ_i ‖X W_i‖² (Q_a per-tensor asymmetric min/max, Q_w
per-channel symmetric), is kept. b is inherited from the following quantize step (`bits`).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.calibration.runner import stream_statistics
from qcompile.calibration.samplers import RowSampler
from qcompile.errors import InputError
from qcompile.ir import quant_meta
from qcompile.ir.properties import Property
from qcompile.passes.transforms.norm_sites import NormSite, find_norm_sites
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.pass_base import Numerics, Pass, PassResult
from qcompile.pipeline.registry import register_pass, register_recipe

__all__ = ["FoldSmoothScalesPass", "smooth_scales", "site_loss"]

MIN_SCALE = 1e-5
ALPHA_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def smooth_scales(act_absmax: np.ndarray, weight_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """s = max|X|^α / max|W|^(1−α), float64, clamped to ≥ MIN_SCALE (zeros stay harmless)."""
    act = np.maximum(act_absmax.astype(np.float64), MIN_SCALE)
    weight = np.maximum(weight_absmax.astype(np.float64), MIN_SCALE)
    return np.maximum(act**alpha / weight ** (1.0 - alpha), MIN_SCALE)


def _fake_quant_rows(x: np.ndarray, bits: int) -> np.ndarray:
    levels = 2**bits - 1
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    step = max((hi - lo) / levels, 1e-12)
    zero = np.rint(-lo / step)
    return (np.clip(np.rint(x / step) + zero, 0, levels) - zero) * step


def _fake_quant_weight(w: np.ndarray, bits: int) -> np.ndarray:
    top = 2 ** (bits - 1) - 1
    step = np.maximum(np.abs(w).max(axis=0, keepdims=True) / top, 1e-12)
    return np.clip(np.rint(w / step), -top, top) * step


def site_loss(x: np.ndarray, weights: list[np.ndarray], scales: np.ndarray, bits: int) -> float:
    """Relative output error of the smoothed site under b-bit fake quantization (weights as [K, N])."""
    xq = _fake_quant_rows(x / scales, bits)
    error = sum(float(np.sum((x @ w - xq @ _fake_quant_weight(scales[:, None] * w, bits)) ** 2)) for w in weights)
    return error / max(sum(float(np.sum((x @ w) ** 2)) for w in weights), 1e-30)


@register_pass("smooth-scales")
class FoldSmoothScalesPass(Pass):
    """Fold SmoothQuant scales s = max|X|^α / max|W|^(1−α) into norm affines and the following weights."""

    requires = frozenset({Property.CALIBRATED})
    establishes = frozenset({Property.SMOOTHED})
    invalidates = frozenset({Property.CALIBRATED})  # the norm outputs change scale
    numerics = Numerics.EXACT_IN_REALS
    target_bits_option = "bits"

    def __init__(
        self, alpha: float | str = 0.5, bits: int = 8, max_rows: int = 2048, context: PipelineContext | None = None
    ) -> None:
        if alpha != "search":
            try:
                alpha = float(alpha)
            except (TypeError, ValueError):
                raise ValueError(f"alpha must be a number in [0, 1] or 'search', got {alpha!r}") from None
            if not 0.0 <= alpha <= 1.0:
                raise ValueError(f"alpha must be in [0, 1] or 'search', got {alpha}")
        if not 2 <= int(bits) <= 8:
            raise ValueError(f"bits must be in 2..8, got {bits}")
        self.alpha = alpha
        self.bits = int(bits)
        self.max_rows = int(max_rows)
        self.context = context or PipelineContext()

    def _search(self, model: ir.Model, sites: list[NormSite]) -> dict[str, float]:
        """The per-site α of ALPHA_GRID with the smallest quantized-output error."""
        data = self.context.calibration
        if data is None:
            raise InputError("smooth-scales:alpha=search needs calibration data (none was given)")
        samplers, _ = stream_statistics(
            model,
            data,
            [s.output.name for s in sites],
            lambda _: RowSampler(self.max_rows, self.context.seed),
            channel_stats=False,
            threads=self.context.threads,
            progress=self.context.progress,
        )
        chosen = {}
        for site in sites:
            x = samplers[site.output.name].sample().astype(np.float64)
            weights = [
                linear.array().astype(np.float64) if linear.in_axis == 0 else linear.array().astype(np.float64).T
                for linear in site.linears
            ]
            absmax = np.abs(x).max(axis=0)
            wmax = np.max([linear.rows_absmax() for linear in site.linears], axis=0)
            losses = {a: site_loss(x, weights, smooth_scales(absmax, wmax, a), self.bits) for a in ALPHA_GRID}
            chosen[site.name] = min(losses, key=losses.get)
        return chosen

    def _scales(self, site: NormSite, alpha: float) -> np.ndarray | str:
        tensor_range = quant_meta.get_range(site.output)
        if tensor_range is None or tensor_range.channel_absmax is None:
            return "no per-channel calibration statistics for the norm output"
        act = np.asarray(tensor_range.channel_absmax)
        if act.shape != site.gamma.const_value.shape:
            return f"calibrated channels {act.shape} do not match γ {site.gamma.const_value.shape}"
        weight = np.max([linear.rows_absmax() for linear in site.linears], axis=0)
        return smooth_scales(act, weight, alpha)

    def call(self, model: ir.Model) -> PassResult:
        sites, skipped = find_norm_sites(model.graph, rms=True)
        alphas = self._search(model, sites) if self.alpha == "search" and sites else {s.name: self.alpha for s in sites}
        folded, ratios = 0, []
        for site in sites:
            site_values = [site.output, *(linear.weight for linear in site.linears)]
            if any(quant_meta.get_quant(v) is not None for v in site_values):
                raise InputError(f"pass 'smooth-scales' must run before quantization (site '{site.name}' is quantized)")
            scales = self._scales(site, alphas[site.name])
            if isinstance(scales, str):
                skipped[site.name] = scales
                continue
            site.scale_affine(1.0 / scales)
            for linear in site.linears:
                linear.scale_input_channels(scales)
            quant_meta.set_range(site.output, None)  # stale now
            ratios.append(float(scales.max() / scales.min()))
            folded += 1
        alpha_stat = alphas if self.alpha == "search" else self.alpha
        stats = {
            "folded": folded,
            "skipped": skipped,
            "alpha": alpha_stat,
            "max_scale_spread": max(ratios, default=1.0),
        }
        return PassResult(model, modified=folded > 0, stats=stats)


register_recipe(
    "smooth",
    ["calibrate", "smooth-scales"],
    "calibrate, then fold SmoothQuant scales (alpha=0.5) into LayerNorm → linear sites; quantize afterwards",
)
