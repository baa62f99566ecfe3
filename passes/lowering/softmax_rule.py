"""Lower Softmax over the last axis to `IBertSoftmax` or `Shiftmax`.

The input (an int32 accumulator a at scale S) is first brought to a fixed 16-bit grid below the row
maximum, which needs no calibration because exp ignores everything more than `WINDOW` = 20 below the
maximum (e^−20 ≈ 2e−9):

    d   = a − max_row(a) ≤ 0                                   (int32)
    d16 = clamp(Requantize(d; S/S16), −32767, 0),  S16 = 20/32767

then the kernel runs on d16 (its own max subtraction is then a no-op) and returns probabilities p with
real value p/2^b (IBertSoftmax) or p/2^(b−1) (Shiftmax). The output keeps `bits` = 16 by default: a
uniform 8-bit grid on [0, 1] cannot represent attention probabilities ≈ 1/n for n in the hundreds
(docs/methods/uniform.md). Shiftmax uses I-ViT's clamp n = 15; its row sum L·|x0|·2^15 stays far below
the 2^62 of its normalization for any realistic row length L.

Row sums: both kernels end with out = ⌊e·f / 2^s⌋, f = ⌊2^62 / Σe⌋, e ≥ 0, and 2^(62 − s) is the top
code, so Σ out ≤ ⌊f·Σe / 2^s⌋ ≤ 2^(62 − s): a row of probabilities sums to at most the top code. The
returned value records it (`IntValue.row_sum`); a backend uses it to prove narrow P·V kernels exact.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.intops.dyadic import dyadic_multiplier
from qcompile.intops.ibert_softmax import IBertSoftmax, ibert_softmax, ibert_softmax_params
from qcompile.intops.int_exp import exp_x0
from qcompile.intops.requantize import Requantize
from qcompile.intops.shiftmax import Shiftmax, shiftmax
from qcompile.passes.lowering.int_value import IntValue
from qcompile.passes.lowering.reduce_rule import MAX_DYNAMIC_LENGTH
from qcompile.passes.lowering.rule_base import LoweringRule, MatchResult, failed, matched

__all__ = [
    "SOFTMAX_VARIANTS",
    "WINDOW",
    "exact_softmax",
    "kernel_constants",
    "simulate",
    "lower_softmax",
    "SoftmaxIntoIntSoftmax",
]

SOFTMAX_VARIANTS = ("ibert", "shiftmax")
WINDOW = 20.0
GRID = 2**15 - 1
SHIFTMAX_N = 15


def exact_softmax(x: np.ndarray) -> np.ndarray:
    """Float64 softmax over the last axis, what the variants are measured against."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def kernel_constants(variant: str, bits: int, row_length: int) -> tuple[object, list[int], float, int]:
    """(kernel, its int64 constants after the input, output scale, top code) of a variant on the window grid."""
    if variant not in SOFTMAX_VARIANTS:
        raise ValueError(f"softmax variant must be one of {', '.join(SOFTMAX_VARIANTS)}, got {variant}")
    grid_scale = WINDOW / GRID
    if variant == "ibert":
        x0, b_int, c_int, n = ibert_softmax_params(grid_scale)
        return IBertSoftmax, [x0, b_int, c_int, n, bits], 2.0**-bits, 2**bits
    x0 = exp_x0(grid_scale)
    if row_length * -x0 * 2**SHIFTMAX_N >= 2**62:
        raise ValueError(f"Shiftmax rows of {row_length} values overflow its int64 normalization")
    return Shiftmax, [x0, SHIFTMAX_N, bits], 2.0 ** -(bits - 1), 2 ** (bits - 1)


def simulate(variant: str, scores: np.ndarray, bits: int) -> np.ndarray:
    """The variant's probabilities for float scores (window grid rounded half up, then the kernel's NumPy
    reference), to compare variants on calibration data before lowering."""
    _, constants, out_scale, _ = kernel_constants(variant, bits, scores.shape[-1])
    d = scores.astype(np.float64) - scores.max(axis=-1, keepdims=True)
    d16 = np.clip(np.floor(d / (WINDOW / GRID) + 0.5), -GRID, 0).astype(np.int32)
    reference = ibert_softmax if variant == "ibert" else shiftmax
    return reference(d16, *constants) * out_scale


def lower_softmax(emit, x: IntValue, row_length: int, variant: str, bits: int, name: str) -> IntValue:
    """Probabilities of the plain integer value `x` over its last axis."""
    kernel, constants, out_scale, top_code = kernel_constants(variant, bits, row_length)
    q = emit.cast(x.value, ir.DataType.INT32, f"{name}_i32")
    top = emit.node(
        "ReduceMax",
        [q, emit.const(f"{name}_axes", np.array([-1], np.int64))],
        f"{name}_rowmax",
        ir.DataType.INT32,
        keepdims=1,
    )
    d = emit.node("Sub", [q, top], f"{name}_below_max", ir.DataType.INT32)
    m, e = dyadic_multiplier(float(x.scale) / (WINDOW / GRID))
    params = [
        emit.const(f"{name}_m", m),
        emit.const(f"{name}_e", e),
        emit.const(f"{name}_b", np.int64(0)),
        emit.const(f"{name}_lo", np.int64(-GRID)),
        emit.const(f"{name}_hi", np.int64(0)),
    ]
    d16 = emit.cast(emit.kernel(Requantize, [d, *params], f"{name}_d16"), ir.DataType.INT32, f"{name}_d16_i32")
    inputs = [d16] + [emit.const(f"{name}_k{i}", np.int64(c)) for i, c in enumerate(constants)]
    probs = emit.kernel(kernel, inputs, f"{name}_probs")
    return IntValue(probs, np.float64(out_scale), 0, 0, top_code, row_sum=top_code)


class SoftmaxIntoIntSoftmax(LoweringRule):
    """Softmax over the last axis → `IBertSoftmax` | `Shiftmax` (the site's measured choice)."""

    op_types = ("Softmax",)

    def match(self, ctx, node: ir.Node) -> MatchResult:
        x = node.inputs[0]
        rank = len(x.shape) if x.shape is not None else None
        axis = node.attributes.get_int("axis", -1)
        if not (axis == -1 or (rank is not None and axis == rank - 1)):
            return failed(f"axis {axis} is not the last axis")
        return matched()

    def check(self, ctx, node: ir.Node) -> MatchResult:
        source = ctx.integer(node.inputs[0])
        if not source.plain:
            return failed(f"input '{node.inputs[0].name}' has no per-tensor positive scale without offset")
        return matched(source=source)

    def rewrite(self, ctx, node: ir.Node, source: IntValue) -> None:
        name = node.name or node.outputs[0].name
        shape = node.inputs[0].shape
        length = shape[-1] if shape is not None else None
        length = length if isinstance(length, int) else MAX_DYNAMIC_LENGTH
        variant = ctx.choices["softmax"].get(node.outputs[0].name, {}).get("choice", ctx.softmax)
        ctx.ints[id(node.outputs[0])] = lower_softmax(ctx.emit, source, length, variant, ctx.softmax_bits, name)
