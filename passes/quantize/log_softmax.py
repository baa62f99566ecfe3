"""RepQ-ViT's log√2 quantizer on post-Softmax activations (METHODS.md §3.1, §3.3).

Attention probabilities A ∈ [0, 1] are concentrated near 0 with a few large entries; a uniform grid
wastes its levels (docs/methods/uniform.md measures it). The log√2 quantizer keeps their order of
magnitude instead:

    q = clamp(round(−2 log2(A / Δ)), 0, 2^b − 1),   Â = Δ · 2^(−q/2)
      = Δ · 2^(−⌈q/2⌉) · (1 + (√2 − 1) · (q mod 2))          (the log2 form RepQ-ViT reparameterizes to)

so Â·V is a shift-add over V with the parity correction (√2 − 1) folded into one scale. Δ comes from
quantile + MSE search (`calibration.search.log_sqrt2_search`) over a bounded uniform sample of every
softmax output. Code 2^b − 1 stands for exact zero (see `ir.quant_meta`). The exported model computes
both forms with `qcompile` domain functions whose bodies are standard ONNX ops (qcompile/runtime/log_quant.py).

Targets: every Softmax output whose consumers are all MatMul (A·V). The pass annotates, so the
`quantize` step that follows leaves these values alone; it is LOSSY.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.calibration.runner import stream_statistics
from qcompile.calibration.samplers import ValueSampler
from qcompile.calibration.search import log_sqrt2_search
from qcompile.errors import InputError
from qcompile.ir import quant_meta
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.pass_base import Numerics, Pass, PassResult
from qcompile.pipeline.registry import register_pass

__all__ = ["LogSqrt2SoftmaxPass", "softmax_sites"]


def softmax_sites(model: ir.Model) -> tuple[list[ir.Value], dict[str, str]]:
    """Softmax outputs read only by MatMuls, and {softmax: reason} for the others."""
    sites, skipped = [], {}
    outputs = {id(v) for v in model.graph.outputs}
    for node in model.graph:
        if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx"):
            continue
        value = node.outputs[0]
        uses = list(value.uses())
        if not uses or id(value) in outputs:
            skipped[node.name] = "the softmax output is a graph output or unused"
        elif any(use.node.op_type != "MatMul" for use in uses):
            skipped[node.name] = "a consumer of the softmax output is not a MatMul"
        elif quant_meta.get_quant(value) is not None:
            skipped[node.name] = "already quantized"
        else:
            sites.append(value)
    return sites, skipped


@register_pass("log-softmax")
class LogSqrt2SoftmaxPass(Pass):
    """Give post-Softmax activations a log√2 quantizer with a quantile + MSE searched Δ."""

    numerics = Numerics.LOSSY
    target_bits_option = "act_bits"

    def __init__(self, act_bits: int = 8, max_values: int = 1 << 20, context: PipelineContext | None = None) -> None:
        if not 2 <= int(act_bits) <= 8:
            raise ValueError(f"act_bits must be in 2..8, got {act_bits}")
        self.act_bits = int(act_bits)
        self.max_values = int(max_values)
        self.context = context or PipelineContext()

    def call(self, model: ir.Model) -> PassResult:
        data = self.context.calibration
        if data is None:
            raise InputError("pass 'log-softmax' needs calibration data (none was given)")
        sites, skipped = softmax_sites(model)
        if not sites:
            return PassResult(model, modified=False, stats={"quantized": 0, "skipped": skipped})
        samplers, _ = stream_statistics(
            model,
            data,
            [v.name for v in sites],
            lambda _: ValueSampler(self.max_values, self.context.seed),
            channel_stats=False,
            threads=self.context.threads,
            progress=self.context.progress,
        )
        deltas = {}
        for value in sites:
            delta = log_sqrt2_search(samplers[value.name].sample(), self.act_bits)
            quant_meta.set_quant(
                value,
                quant_meta.QuantSpec(self.act_bits, False, np.float32(delta), np.int32(0), None, kind="log_sqrt2"),
            )
            deltas[value.name] = delta
        stats = {
            "quantized": len(sites),
            "skipped": skipped,
            "act_bits": self.act_bits,
            "delta_range": [min(deltas.values()), max(deltas.values())],
        }
        return PassResult(model, modified=True, stats=stats)
