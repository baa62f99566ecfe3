"""Lower GELU — the Erf chain exporters write, or the `Gelu` op — to `IntGELU` (I-BERT) or `ShiftGELU`.

Matched: x·0.5·(1 + erf(x/√2)) as Mul(x, 1/√2) or Div(x, √2) → Erf → Add(1), then the products with x
and 0.5 in any of three orders — (x·(1 + erf))·0.5, (0.5·x)·(1 + erf), x·(0.5·(1 + erf)) (the torch
exporter's) — either operand order; or Gelu(x) with approximate = "none".

The input (an accumulator, usually per channel) is requantized to int16 at S16 = max(T, 4)/32767, where
T is the top of the range of the output's QuantSpec (the next linear's input quantizer): GELU(x) = x
above 4 to 1e-4, and below −4 it is 0 to 1e-4, so clamping x to ±max(T, 4) changes nothing the output
quantizer could see. No calibration is needed.

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
from qcompile.intops.shiftgelu import GELU_SIGMOID_SLOPE, ShiftGELU, shift_gelu
from qcompile.ir import const_array, quant_meta
from qcompile.passes.lowering.int_value import IntValue, requantize_to

__all__ = ["GELU_VARIANTS", "GeluMatch", "match_gelu", "grid_scale", "kernel_constants", "simulate", "lower_gelu"]

GELU_VARIANTS = ("ibert", "shiftgelu")
GRID = 2**15 - 1
SIGMOID_BITS = 8
SHIFTGELU_N = 23


@dataclasses.dataclass
class GeluMatch:
    nodes: list[ir.Node]
    x: ir.Value
    output: ir.Value


def _const(value: ir.Value | None) -> float | None:
    array = const_array(value)
    return None if array is None or array.size != 1 else float(array.reshape(()))


def _other(node: ir.Node, value: ir.Value) -> ir.Value:
    return node.inputs[1] if node.inputs[0] is value else node.inputs[0]


def _only_use(value: ir.Value, op_type: str) -> ir.Node | None:
    uses = list(value.uses())
    return uses[0].node if len(uses) == 1 and uses[0].node.op_type == op_type else None


def _is_half_of(value: ir.Value, x: ir.Value) -> bool:
    producer = value.producer()
    return producer is not None and producer.op_type == "Mul" and x in producer.inputs and _const(_other(producer, x)) == 0.5


def match_gelu(node: ir.Node) -> GeluMatch | None:
    if node.domain in ("", "ai.onnx") and node.op_type == "Gelu" and node.attributes.get_string("approximate", "none") == "none":
        return GeluMatch([node], node.inputs[0], node.outputs[0])
    if node.op_type != "Erf":
        return None
    scaled = node.inputs[0].producer()
    if scaled is None or scaled.op_type not in ("Mul", "Div"):
        return None
    x = scaled.inputs[0]
    factor = _const(scaled.inputs[1])
    if scaled.op_type == "Mul" and factor is None:
        x, factor = scaled.inputs[1], _const(scaled.inputs[0])
    if factor is None or not math.isclose(factor if scaled.op_type == "Mul" else 1.0 / factor, 0.5**0.5, rel_tol=1e-4):
        return None
    add = _only_use(node.outputs[0], "Add")
    if add is None or _const(_other(add, node.outputs[0])) != 1.0:
        return None
    product = _only_use(add.outputs[0], "Mul")
    if product is None:
        return None
    factor_in = _other(product, add.outputs[0])
    nodes = [scaled, node, add, product]
    if _const(factor_in) == 0.5:  # 0.5·(1 + erf) first, then x·(…)
        outer = _only_use(product.outputs[0], "Mul")
        if outer is None or _other(outer, product.outputs[0]) is not x:
            return None
        return GeluMatch([*nodes, outer], x, outer.outputs[0])
    if factor_in is x:
        half = _only_use(product.outputs[0], "Mul")
        if half is None or _const(_other(half, product.outputs[0])) != 0.5:
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


def kernel_constants(variant: str, scale: float) -> tuple[object, list[int], float, int]:
    """(kernel, its int64 constants after the input, output scale, bound of |output|) on input grid `scale`."""
    if variant not in GELU_VARIANTS:
        raise ValueError(f"GELU variant must be one of {', '.join(GELU_VARIANTS)}, got {variant}")
    if variant == "ibert":
        b_int, c_int, one, n, out_scale = int_gelu_params(scale, poly_bits=14)
        return IntGELU, [b_int, c_int, one, n], out_scale, GRID * (abs(c_int) // 2**n + abs(one) + 2)
    x0 = exp_x0(GELU_SIGMOID_SLOPE * scale)
    return ShiftGELU, [x0, SHIFTGELU_N, SIGMOID_BITS], scale / 2 ** (SIGMOID_BITS - 1), GRID * 2 ** (SIGMOID_BITS - 1)


def simulate(variant: str, x: np.ndarray, scale: float) -> np.ndarray:
    """The variant's GELU of float x on the grid `scale` (NumPy references), for choosing variants."""
    _, constants, out_scale, _ = kernel_constants(variant, scale)
    q = np.clip(np.floor(x.astype(np.float64) / scale + 0.5), -GRID, GRID).astype(np.int32)
    reference = int_gelu if variant == "ibert" else shift_gelu
    return reference(q, *constants) * out_scale


def lower_gelu(emit, match: GeluMatch, source: IntValue, variant: str, name: str) -> IntValue:
    scale = grid_scale(match)
    kernel, constants, out_scale, bound = kernel_constants(variant, scale)
    x = requantize_to(emit, source, scale, 0, -GRID, GRID, f"{name}_in16")
    x32 = emit.cast(x.value, ir.DataType.INT32, f"{name}_in32")
    inputs = [x32] + [emit.const(f"{name}_k{i}", np.int64(c)) for i, c in enumerate(constants)]
    out = emit.kernel(kernel, inputs, f"{name}_gelu")
    return IntValue(out, np.float64(out_scale), 0, -bound, bound)
