"""SmoothQuant scale folding (Xiao et al. 2023; METHODS.md §6).

For a norm output X (per-channel max |X_j| from calibration) feeding linears W_1..W_m (input channel j):

    s_j = max|X_j|^α / max_i max_k |W_i[j, k]|^(1−α),   clamped to ≥ 1e-5
    γ ← γ / s,  β ← β / s,   W_i[j, :] ← s_j · W_i[j, :]

so X/s · (diag(s) W) = X W: exact in real arithmetic (EXACT_IN_REALS). Activation outliers move into the
weights, which per-channel weight quantizers absorb. max|W_j| is taken over all linears sharing the norm
(q/k/v together), as the reference implementation does. Weight math is float64.

Only norm → linear sites are smoothed (LN → QKV, LN → FC1), as in the reference code; the rest are
reported in `stats["skipped"]` with the reason.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.errors import InputError
from qcompile.ir import quant_meta
from qcompile.ir.properties import Property
from qcompile.passes.transforms.norm_sites import NormSite, find_norm_sites
from qcompile.pipeline.pass_base import Numerics, Pass, PassResult
from qcompile.pipeline.registry import register_pass, register_recipe

__all__ = ["FoldSmoothScalesPass", "smooth_scales"]

MIN_SCALE = 1e-5


def smooth_scales(act_absmax: np.ndarray, weight_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """s = max|X|^α / max|W|^(1−α), float64, clamped to ≥ MIN_SCALE (zeros stay harmless)."""
    act = np.maximum(act_absmax.astype(np.float64), MIN_SCALE)
    weight = np.maximum(weight_absmax.astype(np.float64), MIN_SCALE)
    return np.maximum(act**alpha / weight ** (1.0 - alpha), MIN_SCALE)


@register_pass("smooth-scales")
class FoldSmoothScalesPass(Pass):
    """Fold SmoothQuant scales s = max|X|^α / max|W|^(1−α) into norm affines and the following weights."""

    requires = frozenset({Property.CALIBRATED})
    establishes = frozenset({Property.SMOOTHED})
    invalidates = frozenset({Property.CALIBRATED})  # the norm outputs change scale
    numerics = Numerics.EXACT_IN_REALS

    def __init__(self, alpha: float = 0.5) -> None:
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = alpha

    def _scales(self, site: NormSite) -> np.ndarray | str:
        tensor_range = quant_meta.get_range(site.output)
        if tensor_range is None or tensor_range.channel_absmax is None:
            return "no per-channel calibration statistics for the norm output"
        act = np.asarray(tensor_range.channel_absmax)
        if act.shape != site.gamma.const_value.shape:
            return f"calibrated channels {act.shape} do not match γ {site.gamma.const_value.shape}"
        weight = np.max([linear.rows_absmax() for linear in site.linears], axis=0)
        return smooth_scales(act, weight, self.alpha)

    def call(self, model: ir.Model) -> PassResult:
        sites, skipped = find_norm_sites(model.graph)
        folded, ratios = 0, []
        for site in sites:
            if any(quant_meta.get_quant(v) is not None for v in [site.output, *(l.weight for l in site.linears)]):
                raise InputError(f"pass 'smooth-scales' must run before quantization (site '{site.name}' is quantized)")
            scales = self._scales(site)
            if isinstance(scales, str):
                skipped[site.name] = scales
                continue
            site.scale_affine(1.0 / scales)
            for linear in site.linears:
                linear.scale_input_channels(scales)
            quant_meta.set_range(site.output, None)  # stale now
            ratios.append(float(scales.max() / scales.min()))
            folded += 1
        stats = {"folded": folded, "skipped": skipped, "alpha": self.alpha, "max_scale_spread": max(ratios, default=1.0)}
        return PassResult(model, modified=folded > 0, stats=stats)


register_recipe(
    "smooth",
    ["calibrate", "smooth-scales"],
    "calibrate, then fold SmoothQuant scales (alpha=0.5) into LayerNorm → linear sites; quantize afterwards",
)
