"""Lower GELU — the Erf chain exporters write, or the `Gelu` op — to a `Lookup` table, `IntGELU` (I-BERT)
or `ShiftGELU` (I-ViT).

Matched: x·0.5·(1 + erf(x/√2)) as Mul(x, 1/√2) or Div(x, √2) → Erf → Add(1), then the products with x
and 0.5 in any of three orders — (x·(1 + erf))·0.5, (0.5·x)·(1 + erf), x·(0.5·(1 + erf)) (the torch
exporter's) — either operand order; or Gelu(x) with approximate = "none".

The input (an accumulator, usually per channel) is requantized to int16 at S16 = max(T, 4)/32767, where
T is the top of the range of the output's QuantSpec (the next linear's input quantizer): GELU(x) = x
above 4 to 1e-4, and below −4 it is 0 to 1e-4, so clamping x to ±max(T, 4) changes nothing the output
quantizer could see. No calibration is needed.

Variant "table": the exact GELU of every code k ∈ [−32767, 32767] of that grid, quantized at the
output's QuantSpec (s, z: the next linear's input quantizer), round(GELU(k·S16)/s) + z clamped, is a
constant table and `Lookup` reads it, so the output is the next linear's codes with no further
requantization, and its only error is the one the QDQ model has too (plus the 16-bit input grid's).
Without an output QuantSpec the table holds int16 codes on a symmetric grid of max|GELU|. I-BERT's and
I-ViT's approximations err systematically (the same error at the same input on every token): on the zoo
models' GELU inputs they are several dB below the 8-bit output quantizer's own SQNR, and each FC2 turns
their per-channel mean into a bias of the residual stream (benchmarks/results/intonly_report.md).

IntGELU keeps 14 significant bits in its polynomial (`poly_bits`) so that |x·(y + one)| < 2^30 fits the
int32 requantization that follows; its output scale is negative (I-BERT's a < 0), which the next
`requantize_to` handles with an integer sign flip. ShiftGELU uses I-ViT's σ with 8 bits and clamp
n = 23 (its two-way sum 2·|x0|·2^23 is far below the 2^62 of its normalization).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir

from qcompile.intops.int_exp import exp_x0
from qcompile.intops.int_gelu import IntGELU, int_gelu, int_gelu_params
from qcompile.intops.lookup import Lookup, lookup
from qcompile.intops.shiftgelu import GELU_SIGMOID_SLOPE, ShiftGELU, shift_gelu
from qcompile.ir import quant_meta
from qcompile.passes.lowering.graph_match import only_use, other_input, scalar_constant
from qcompile.passes.lowering.int_value import IntValue, container, requantize_to
from qcompile.passes.lowering.rule_base import LoweringRule, MatchResult, failed, matched

__all__ = [
    "GELU_VARIANTS",
    "GeluMatch",
    "match_gelu",
    "grid_scale",
    "exact_gelu",
    "gelu_table",
    "kernel_constants",
    "simulate",
    "lower_gelu",
    "GeluIntoIntGelu",
]

GELU_VARIANTS = ("table", "ibert", "shiftgelu")
GRID = 2**15 - 1
SIGMOID_BITS = 8
SHIFTGELU_N = 23


@dataclasses.dataclass
class GeluMatch:
    nodes: list[ir.Node]
    x: ir.Value
    output: ir.Value


def _is_half_of(value: ir.Value, x: ir.Value) -> bool:
    producer = value.producer()
    return (
        producer is not None
        and producer.op_type == "Mul"
        and x in producer.inputs
        and scalar_constant(other_input(producer, x)) == 0.5
    )


def match_gelu(node: ir.Node) -> GeluMatch | None:
    if (
        node.domain in ("", "ai.onnx")
        and node.op_type == "Gelu"
        and node.attributes.get_string("approximate", "none") == "none"
    ):
        return GeluMatch([node], node.inputs[0], node.outputs[0])
    if node.op_type != "Erf":
        return None
    scaled = node.inputs[0].producer()
    if scaled is None or scaled.op_type not in ("Mul", "Div"):
        return None
    x = scaled.inputs[0]
    factor = scalar_constant(scaled.inputs[1])
    if scaled.op_type == "Mul" and factor is None:
        x, factor = scaled.inputs[1], scalar_constant(scaled.inputs[0])
    if factor is None or not math.isclose(factor if scaled.op_type == "Mul" else 1.0 / factor, 0.5**0.5, rel_tol=1e-4):
        return None
    add = only_use(node.outputs[0], "Add")
    if add is None or scalar_constant(other_input(add, node.outputs[0])) != 1.0:
        return None
    product = only_use(add.outputs[0], "Mul")
    if product is None:
        return None
    factor_in = other_input(product, add.outputs[0])
    nodes = [scaled, node, add, product]
    if scalar_constant(factor_in) == 0.5:  # 0.5·(1 + erf) first, then x·(…)
        outer = only_use(product.outputs[0], "Mul")
        if outer is None or other_input(outer, product.outputs[0]) is not x:
            return None
        return GeluMatch([*nodes, outer], x, outer.outputs[0])
    if factor_in is x:
        half = only_use(product.outputs[0], "Mul")
        if half is None or scalar_constant(other_input(half, product.outputs[0])) != 0.5:
            return None
        nodes.append(half)
        output = half.outputs[0]
    elif _is_half_of(factor_in, x):
        nodes.insert(0, factor_in.producer())
        output = product.outputs[0]
    else:
        return None
    return GeluMatch(nodes, x, output)


def grid_scale(match: GeluMatch) -> float:
    """S16 = max(4, top of the output's quantizer) / 32767, the input grid."""
    spec = quant_meta.get_quant(match.output)
    top = 4.0 if spec is None else max(4.0, float((spec.qmax - spec.zero_point) * spec.scale))
    return top / GRID


def exact_gelu(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _output_spec(match: GeluMatch) -> quant_meta.QuantSpec | None:
    spec = quant_meta.get_quant(match.output)
    return spec if spec is not None and spec.kind == "uniform" and spec.axis is None else None


def gelu_table(scale: float, spec: quant_meta.QuantSpec | None) -> tuple[np.ndarray, float, int, int, int]:
    """(table over codes −32767..32767 of the input grid `scale`, output scale, zero point, lo, hi)."""
    real = exact_gelu(np.arange(-GRID, GRID + 1, dtype=np.float64) * scale)
    if spec is None:
        out_scale, zero, lo, hi = float(np.max(np.abs(real))) / GRID, 0, -GRID, GRID
    else:
        out_scale, zero, lo, hi = float(spec.scale), int(spec.zero_point), int(spec.qmin), int(spec.qmax)
    codes = np.clip(np.rint(real / out_scale) + zero, lo, hi)
    return codes.astype(container(lo, hi).numpy()), out_scale, zero, lo, hi


def kernel_constants(variant: str, scale: float) -> tuple[object, list[int], float, int]:
    """(kernel, its int64 constants after the input, output scale, bound of |output|) of an approximation
    variant ("ibert" or "shiftgelu") on input grid `scale`."""
    if variant not in GELU_VARIANTS or variant == "table":
        raise ValueError(f"GELU approximation must be one of ibert, shiftgelu, got {variant}")
    if variant == "ibert":
        b_int, c_int, one, n, out_scale = int_gelu_params(scale, poly_bits=14)
        return IntGELU, [b_int, c_int, one, n], out_scale, GRID * (abs(c_int) // 2**n + abs(one) + 2)
    x0 = exp_x0(GELU_SIGMOID_SLOPE * scale)
    return ShiftGELU, [x0, SHIFTGELU_N, SIGMOID_BITS], scale / 2 ** (SIGMOID_BITS - 1), GRID * 2 ** (SIGMOID_BITS - 1)


def simulate(variant: str, x: np.ndarray, match: GeluMatch) -> np.ndarray:
    """What the lowered GELU of float x computes, dequantized: the variant on the 16-bit grid (NumPy
    references), then the output quantizer the next linear applies, for choosing variants."""
    scale = grid_scale(match)
    spec = _output_spec(match)
    q = np.clip(np.floor(x.astype(np.float64) / scale + 0.5), -GRID, GRID).astype(np.int32)
    if variant == "table":
        table, out_scale, zero, _, _ = gelu_table(scale, spec)
        return (lookup(q, table, -GRID).astype(np.float64) - zero) * out_scale
    _, constants, out_scale, _ = kernel_constants(variant, scale)
    reference = int_gelu if variant == "ibert" else shift_gelu
    out = reference(q, *constants) * out_scale
    if spec is None:
        return out
    return spec.fake_quantize(out).astype(np.float64)


def lower_gelu(emit, match: GeluMatch, source: IntValue, variant: str, name: str) -> IntValue:
    scale = grid_scale(match)
    x = requantize_to(emit, source, scale, 0, -GRID, GRID, f"{name}_in16")
    x32 = emit.cast(x.value, ir.DataType.INT32, f"{name}_in32")
    if variant == "table":
        table, out_scale, zero, lo, hi = gelu_table(scale, _output_spec(match))
        inputs = [x32, emit.const(f"{name}_table", table), emit.const(f"{name}_first", np.int32(-GRID))]
        out = emit.kernel(Lookup, inputs, f"{name}_gelu", ir.DataType.from_numpy(table.dtype))
        return IntValue(out, np.float64(out_scale), zero, lo, hi)
    kernel, constants, out_scale, bound = kernel_constants(variant, scale)
    inputs = [x32] + [emit.const(f"{name}_k{i}", np.int64(c)) for i, c in enumerate(constants)]
    out = emit.kernel(kernel, inputs, f"{name}_gelu")
    return IntValue(out, np.float64(out_scale), 0, -bound, bound)


class GeluIntoIntGelu(LoweringRule):
    """GELU (its Erf forms, met at the Erf, or `Gelu`) → `Lookup` | `IntGELU` | `ShiftGELU` (the site's
    measured choice)."""

    op_types = ("Erf", "Gelu")

    def match(self, ctx, node: ir.Node) -> MatchResult:
        found = match_gelu(node)
        if found is None:
            return failed("not x·0.5·(1 + erf(x/√2)) in a known order, nor Gelu(approximate='none')")
        return matched(gelu=found)

    def rewrite(self, ctx, node: ir.Node, gelu: GeluMatch) -> None:
        variant = ctx.choices["gelu"].get(gelu.output.name, {}).get("choice", ctx.gelu)
        name = node.name or gelu.output.name
        ctx.ints[id(gelu.output)] = lower_gelu(ctx.emit, gelu, ctx.integer(gelu.x), variant, name)
        ctx.consumed.update(id(n) for n in gelu.nodes)
