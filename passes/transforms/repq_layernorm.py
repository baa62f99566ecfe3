"""RepQ-ViT post-LayerNorm reparameterization (Li et al. 2023; METHODS.md §3.2).

A post-LN activation X (LN output y = n ⊙ γ + β, feeding linears W_i [K, N] with biases b_i) has very
different ranges per channel. Calibrate it channel-wise, b bits (quantile + MSE search,
`calibration.search`): step s_c and zero point z_c per channel. Then with

    s̃ = mean(s),   z̃ = round(mean(z)),   r1 = s / s̃,   r2 = z − z̃

fold into the norm and the linears (float64):

    γ̃ = γ / r1,   β̃ = (β + s ⊙ r2) / r1,   W̃_i[c, :] = r1[c] · W_i[c, :],   b̃_i = b_i − (s ⊙ r2) · W_i

so that ỹ = (y + s ⊙ r2) / r1 and ỹ W̃_i + b̃_i = y W_i + b_i: exact in real arithmetic (EXACT_IN_REALS).
Channel c's calibrated range [−z_c s_c, (2^b−1−z_c) s_c] maps to [−z̃ s̃, (2^b−1−z̃) s̃] for every c, so
one per-tensor quantizer (s̃, z̃) now serves all channels. That range is pinned on the norm output
(`TensorRange.pinned`): later calibration keeps it, and `quantize` turns it into exactly (s̃, z̃).
z̃ is rounded (METHODS.md §3.6 gotcha 2: an integer backend needs an integer zero point). Weight
quantizers are chosen by the later `quantize` step, i.e. recalibrated after the r1 scaling (gotcha 1).

Sites are LayerNorm → linear pairs from `norm_sites.find_norm_sites` (LN → Q/K/V, LN → FC1); a site
whose linears lack a constant bias is skipped with the reason.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.calibration.runner import stream_statistics
from qcompile.calibration.samplers import RowSampler
from qcompile.calibration.search import uniform_search
from qcompile.errors import InputError
from qcompile.ir import quant_meta, replace_const
from qcompile.ir.properties import Property
from qcompile.passes.transforms.norm_sites import Linear, NormSite, find_norm_sites
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.pass_base import Numerics, Pass, PassResult
from qcompile.pipeline.registry import register_pass, register_recipe

__all__ = ["RepqLayerNormPass", "linear_bias", "reparameterization"]


def linear_bias(linear: Linear) -> ir.Value | str:
    """The constant bias [N] of `linear` (MatMul → Add(b), or Gemm's C), or the reason there is none."""
    node = linear.node
    out_channels = linear.weight.const_value.shape[1 - linear.in_axis]
    if node.op_type == "Gemm":
        bias = node.inputs[2] if len(node.inputs) > 2 else None
    else:
        uses = list(node.outputs[0].uses())
        if len(uses) != 1 or uses[0].node.op_type != "Add":
            return f"'{node.name}' is not followed by a single bias Add"
        bias = uses[0].node.inputs[1 - uses[0].idx]
    if bias is None or bias.const_value is None or bias.const_value.shape != (out_channels,):
        return f"'{node.name}' has no constant bias of {out_channels} channels"
    if len(bias.uses()) != 1:
        return f"bias '{bias.name}' of '{node.name}' is shared"
    return bias


def reparameterization(samples: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(r1, s ⊙ r2, s̃, z̃) from per-channel samples [N, C] at `bits` bits."""
    params = uniform_search(samples, bits, per_channel=True)
    s, z = params.scale, params.zero_point
    s_mean = float(np.mean(s))
    z_mean = float(np.clip(np.rint(np.mean(z)), 0, params.levels))
    return s / s_mean, s * (z - z_mean), s_mean, z_mean


def _ensure_beta(model: ir.Model, site: NormSite) -> ir.Value:
    if site.beta is not None:
        return site.beta
    node = site.gamma.uses()[0].node  # a fused LayerNormalization without bias
    channels = site.gamma.const_value.shape[0]
    beta = ir.Value(
        name=f"{site.name}_beta", const_value=ir.tensor(np.zeros(channels, np.float32), name=f"{site.name}_beta")
    )
    beta.dtype, beta.shape = ir.DataType.FLOAT, ir.Shape([channels])
    model.graph.register_initializer(beta)
    if len(node.inputs) < 3:
        node.resize_inputs(3)
    node.replace_input_with(2, beta)
    site.beta = beta
    return beta


@register_pass("repq-ln")
class RepqLayerNormPass(Pass):
    """RepQ-ViT: per-channel post-LN quantizer ranges folded into the LN affine and the next linears."""

    invalidates = frozenset({Property.CALIBRATED})
    establishes = frozenset({Property.REPARAMETERIZED})
    numerics = Numerics.EXACT_IN_REALS
    target_bits_option = "act_bits"

    def __init__(self, act_bits: int = 8, max_rows: int = 8192, context: PipelineContext | None = None) -> None:
        if not 2 <= int(act_bits) <= 8:
            raise ValueError(f"act_bits must be in 2..8, got {act_bits}")
        self.act_bits = int(act_bits)
        self.max_rows = int(max_rows)
        self.context = context or PipelineContext()

    def _sites(self, model: ir.Model) -> tuple[list[tuple[NormSite, list[ir.Value]]], dict[str, str]]:
        sites, skipped = find_norm_sites(model.graph)
        usable = []
        for site in sites:
            site_values = [site.output, *(linear.weight for linear in site.linears)]
            if any(quant_meta.get_quant(v) is not None for v in site_values):
                raise InputError(f"pass 'repq-ln' must run before quantization (site '{site.name}' is quantized)")
            biases = [linear_bias(linear) for linear in site.linears]
            reasons = [b for b in biases if isinstance(b, str)]
            if reasons:
                skipped[site.name] = reasons[0]
            else:
                usable.append((site, biases))
        return usable, skipped

    def call(self, model: ir.Model) -> PassResult:
        data = self.context.calibration
        if data is None:
            raise InputError("pass 'repq-ln' needs calibration data (none was given)")
        sites, skipped = self._sites(model)
        if not sites:
            return PassResult(model, modified=False, stats={"reparameterized": 0, "skipped": skipped})
        names = [site.output.name for site, _ in sites]
        samplers, _ = stream_statistics(
            model,
            data,
            names,
            lambda _: RowSampler(self.max_rows, self.context.seed),
            channel_stats=False,
            threads=self.context.threads,
            progress=self.context.progress,
        )
        spreads = []
        for site, biases in sites:
            samples = samplers[site.output.name].sample()
            r1, shift, s_mean, z_mean = reparameterization(samples, self.act_bits)
            beta = _ensure_beta(model, site)
            replace_const(site.gamma, site.gamma.const_value.numpy().astype(np.float64) / r1)
            replace_const(beta, (beta.const_value.numpy().astype(np.float64) + shift) / r1)
            for linear, bias in zip(site.linears, biases):
                weight = linear.array().astype(np.float64)
                rows = weight if linear.in_axis == 0 else weight.T
                replace_const(bias, bias.const_value.numpy().astype(np.float64) - shift @ rows)
                linear.scale_input_channels(r1)
            moved = (samples.astype(np.float64) + shift) / r1
            levels = 2**self.act_bits - 1
            quant_meta.set_range(
                site.output,
                quant_meta.TensorRange(
                    lo=-z_mean * s_mean,
                    hi=(levels - z_mean) * s_mean,
                    raw_min=float(moved.min()),
                    raw_max=float(moved.max()),
                    observer="repq",
                    samples=data.samples,
                    pinned=True,
                ),
            )
            spreads.append(float(r1.max() / r1.min()))
        stats = {
            "reparameterized": len(sites),
            "skipped": skipped,
            "act_bits": self.act_bits,
            "max_r1_spread": max(spreads),
        }
        return PassResult(model, modified=True, stats=stats)


register_recipe(
    "repq",
    ["repq-ln", "log-softmax"],
    "RepQ-ViT: per-channel post-LayerNorm ranges reparameterized to per-tensor (folded into LN and the next "
    "linears), log√2 quantizers on softmax outputs; then quantize (w8a8 when no quantize step follows)",
    completes_with="w8a8",
)
