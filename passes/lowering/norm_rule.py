"""Lower LayerNorm (fused `LayerNormalization` over the last axis, or the decomposed chain
ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add legacy exporters write) to `ILayerNorm`.

The input (the 22-bit residual stream, plain per-tensor) is normalized in integers,
n_int = ILayerNorm(x) with n ≈ n_int·√C/2^30, and the affine stays symbolic: the result is the IntValue
with per-channel scale γ·√C/2^30 (signed) and offset β, which the next `requantize_to` (a linear's
input quantizer, a residual add) applies in one dyadic multiply. LayerNorm's ε is not modelled, as in
I-BERT and I-ViT (it matters only for rows whose variance is near ε). The matched nodes are every node
between the norm's input and its output (`residual_stream.find_norms` finds the pattern).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from qcompile.intops.ilayernorm import OUTPUT_FRACTION_BITS, ILayerNorm
from qcompile.passes.lowering.int_value import IntValue
from qcompile.passes.lowering.rule_base import LoweringRule, MatchResult, failed, matched
from qcompile.passes.transforms.residual_stream import Norm, as_float64

__all__ = ["norm_nodes", "lower_norm", "LayerNormIntoILayerNorm"]


def norm_nodes(norm: Norm) -> list[ir.Node]:
    """Every node on a path from the norm's input to its output."""
    found: dict[int, ir.Node] = {}
    stack = [norm.output.producer()]
    while stack:
        node = stack.pop()
        if node is None or id(node) in found:
            continue
        found[id(node)] = node
        stack += [
            v.producer() for v in node.inputs if v is not None and v is not norm.input and v.producer() is not None
        ]
    return list(found.values())


def lower_norm(emit, norm: Norm, x: IntValue, name: str) -> IntValue:
    channels = int(as_float64(norm.gamma).size)
    x32 = emit.cast(x.value, ir.DataType.INT32, f"{name}_i32")
    if x.zero_point:
        raise ValueError(f"LayerNorm '{name}' input has a zero point; the residual stream is symmetric")
    normalized = emit.kernel(ILayerNorm, [x32, emit.const(f"{name}_shift", np.int64(0))], f"{name}_normalized")
    gamma = np.broadcast_to(as_float64(norm.gamma), (channels,))
    beta = None if norm.beta is None else np.broadcast_to(as_float64(norm.beta), (channels,)).copy()
    scale = gamma * math.sqrt(channels) / 2.0**OUTPUT_FRACTION_BITS
    bound = 2**31 - 1
    return IntValue(normalized, scale, 0, -bound, bound, beta)


class LayerNormIntoILayerNorm(LoweringRule):
    """A LayerNorm, fused or decomposed (`find_norms`, met at its first node) → `ILayerNorm` on the input's
    calibrated grid; γ and β stay symbolic in the output's scale and offset."""

    def match(self, ctx, node: ir.Node) -> MatchResult:
        found = ctx.norms.get(id(node))
        return failed("not part of a LayerNorm") if found is None else matched(norm=found[0], nodes=found[1])

    def rewrite(self, ctx, node: ir.Node, norm: Norm, nodes: list[ir.Node]) -> None:
        name = norm.name or norm.output.name
        ctx.ints[id(norm.output)] = lower_norm(ctx.emit, norm, ctx.on_grid(norm.input, name), name)
        ctx.consumed.update(id(n) for n in nodes)
