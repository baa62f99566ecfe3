"""Lower a quantized linear y = x·W (+ b) to `IntLinear` (integer codes in, int32 accumulator out).

With the activation quantizer (S_x, z_x) and the weight's symmetric per-channel codes W_q, S_w[n]:

    y[n] ≈ S_x·S_w[n]·(Σ_k (x_q[k] − z_x)·W_q[k, n] + B[n]),   B[n] = round(b[n] / (S_x·S_w[n]))
         = S_x·S_w[n]·(Σ_k x_q[k]·W_q[k, n] + B'[n]),        B'[n] = B[n] − z_x·Σ_k W_q[k, n]

so the accumulator is `IntLinear(x_q, W_q, B')` at scale S_x·S_w (per channel), exactly the QDQ model's
dequantized product up to the rounding of b (QDQ keeps b in float). Matches MatMul(x, W[K, N]) and
Gemm(x, W) with transA = 0, alpha = beta = 1 (transB read), each with a constant weight carrying a
uniform per-channel QuantSpec and an activation with a per-tensor one; a following Add of a constant
vector of N (the output's only use) is the bias.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from qcompile.intops.int_linear import IntLinear
from qcompile.ir import const_array, quant_meta
from qcompile.passes.lowering.int_value import IntValue
from qcompile.passes.lowering.rule_base import LoweringRule, MatchResult, failed, matched

__all__ = ["LinearMatch", "match_linear", "lower_linear", "LinearIntoIntLinear"]

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


@dataclasses.dataclass
class LinearMatch:
    nodes: list[ir.Node]
    x: ir.Value
    weight: np.ndarray  # as stored (the spec's layout)
    transposed: bool  # stored as N×K (Gemm transB = 1)
    weight_spec: quant_meta.QuantSpec
    bias: np.ndarray | None
    output: ir.Value


def _bias_add(output: ir.Value, channels: int) -> tuple[ir.Node, np.ndarray] | None:
    uses = list(output.uses())
    if len(uses) != 1 or uses[0].node.op_type != "Add":
        return None
    add = uses[0].node
    other = add.inputs[1 - uses[0].idx]
    array = const_array(other) if other is not None else None
    if array is None or array.shape != (channels,):
        return None
    return add, array.astype(np.float64)


def match_linear(node: ir.Node) -> LinearMatch | None:
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm") or len(node.inputs) < 2:
        return None
    x, w = node.inputs[0], node.inputs[1]
    spec_w = quant_meta.get_quant(w) if w is not None else None
    if spec_w is None or w.const_value is None or x is None:
        return None
    stored = w.const_value.numpy()
    if stored.ndim != 2:
        return None
    transposed, bias, nodes = False, None, [node]
    channels = stored.shape[1]
    if node.op_type == "Gemm":
        attrs = node.attributes
        if attrs.get_int("transA", 0) or attrs.get_float("alpha", 1.0) != 1.0 or attrs.get_float("beta", 1.0) != 1.0:
            return None
        transposed = bool(attrs.get_int("transB", 0))
        channels = stored.shape[0] if transposed else stored.shape[1]
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            bias = const_array(node.inputs[2])
            if bias is None:
                return None
            bias = np.broadcast_to(bias.astype(np.float64), (channels,)).copy()
    output = node.outputs[0]
    if bias is None:
        fused = _bias_add(output, channels)
        if fused is not None:
            nodes.append(fused[0])
            bias, output = fused[1], fused[0].outputs[0]
    return LinearMatch(nodes, x, stored, transposed, spec_w, bias, output)


def lower_linear(match: LinearMatch, x: IntValue, emit, name: str) -> IntValue:
    """Emit IntLinear for `match` reading codes `x` (at the activation's QuantSpec)."""
    spec = match.weight_spec
    # signed codes: quantize(W) − quantize(0) removes the (per-channel) zero point in the stored layout
    codes = spec.quantize(match.weight).astype(np.int64) - spec.quantize(np.zeros_like(match.weight))
    codes = codes.T if match.transposed else codes  # K×N
    channel_scale = np.broadcast_to(spec.scale.astype(np.float64), (codes.shape[1],))
    scale = float(x.scale) * channel_scale
    bias = np.zeros(codes.shape[1]) if match.bias is None else match.bias
    bias_int = np.rint(bias / scale).astype(np.int64) - x.zero_point * codes.sum(axis=0)
    if bias_int.min() < INT32_MIN or bias_int.max() > INT32_MAX:
        raise ValueError(f"bias of '{name}' does not fit int32 at scale S_x·S_w")
    w = emit.const(f"{name}_w_q", codes.astype(np.int8))
    b = emit.const(f"{name}_bias_q", bias_int.astype(np.int32))
    acc = emit.kernel(IntLinear, [x.value, w, b], f"{name}_acc", ir.DataType.INT32)
    return IntValue(acc, scale, 0, INT32_MIN, INT32_MAX)


class LinearIntoIntLinear(LoweringRule):
    """MatMul/Gemm by a quantized constant weight (+ bias) → `IntLinear` on the input's codes."""

    op_types = ("MatMul", "Gemm")

    def match(self, ctx, node: ir.Node) -> MatchResult:
        found = match_linear(node)
        return failed("no quantized constant 2-D weight") if found is None else matched(linear=found)

    def check(self, ctx, node: ir.Node, linear: LinearMatch) -> MatchResult:
        if linear.weight_spec.group_size is not None:
            name = node.name or linear.output.name
            return failed(f"weight of linear '{name}' is quantized per group: IntLinear takes per-channel weights")
        spec = quant_meta.get_quant(linear.x)
        if spec is None or spec.kind != "uniform" or spec.axis is not None:
            name = node.name or linear.output.name
            return failed(f"input '{linear.x.name}' of linear '{name}' has no per-tensor uniform quantizer")
        return matched(spec=spec)

    def rewrite(self, ctx, node: ir.Node, linear: LinearMatch, spec: quant_meta.QuantSpec) -> None:
        name = node.name or linear.output.name
        x = ctx.at_spec(linear.x, spec, f"{name}_x")
        ctx.ints[id(linear.output)] = lower_linear(linear, x, ctx.emit, name)
        ctx.consumed.update(id(n) for n in linear.nodes)
