"""Lower a patch-embedding convolution (stride = kernel, no padding, no dilation, one group; the ViT
patchify) to data movement plus `IntLinear`, the form the TVM backend lowers well (its ONNX importer has no
ConvInteger).

For x [B, C, H, W] and W [O, C, k, k] with H = h·k, W = w·k:

    patches = Reshape(x, [B, C, h, k, w, k]) → Transpose(0, 2, 4, 1, 3, 5) → Reshape([B, h·w, C·k·k])
    y       = patches · W' + b,   W' = reshape(W, [O, C·k·k])ᵀ

and y is put back in the convolution's layout [B, O, h, w] (Transpose, Reshape) so the exporter's own
flatten/transpose that follow still apply. The integer path: x's calibrated 22-bit codes are requantized
to a symmetric int8 grid (S8 = max|x|/127; wider codes × int8 products over C·k·k = 588 terms could pass 2^31),
W' gets symmetric per-output-channel 8-bit codes, the accumulator is requantized to its calibrated 22-bit
grid (per tensor, because the channel axis moves) before the layout change.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.ir import const_array
from qcompile.passes.lowering.int_value import IntValue, requantize_to
from qcompile.passes.lowering.linear_rule import LinearMatch, lower_linear
from qcompile.passes.lowering.ranges import RESIDUAL_GRID
from qcompile.passes.lowering.rule_base import LoweringRule, MatchResult, failed, matched
from qcompile.passes.quantize.params import symmetric_per_channel_spec

__all__ = ["is_patch_conv", "lower_patch_conv", "PatchConvIntoIntLinear"]


def is_patch_conv(node: ir.Node) -> bool:
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
        return False
    weight = const_array(node.inputs[1])
    shape = node.inputs[0].shape
    if weight is None or weight.ndim != 4 or shape is None or len(shape) != 4:
        return False
    kernel = list(weight.shape[2:])
    attrs = node.attributes
    strides = list(attrs.get_ints("strides", [1, 1]))
    pads = list(attrs.get_ints("pads", [0, 0, 0, 0]))
    dilations = list(attrs.get_ints("dilations", [1, 1]))
    static = all(isinstance(d, int) for d in list(shape)[1:])
    return (
        strides == kernel
        and not any(pads)
        and dilations == [1, 1]
        and attrs.get_int("group", 1) == 1
        and attrs.get_string("auto_pad", "NOTSET") in ("NOTSET", "VALID")
        and static
        and shape[2] % kernel[0] == 0
        and shape[3] % kernel[1] == 0
    )


def lower_patch_conv(emit, node: ir.Node, x: IntValue, out_scale: float, name: str) -> IntValue:
    weight = const_array(node.inputs[1]).astype(np.float64)
    bias = (
        const_array(node.inputs[2]).astype(np.float64) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    )
    out_channels, channels, kh, kw = weight.shape
    _, _, height, width = (int(d) if isinstance(d, int) else 0 for d in node.inputs[0].shape)
    h, w = height // kh, width // kw
    top = max(abs(x.lo), abs(x.hi)) * float(x.scale)
    x8 = requantize_to(emit, x, top / 127, 0, -127, 127, f"{name}_x8")
    grid = emit.node(
        "Reshape",
        [x8.value, emit.const(f"{name}_grid", np.array([0, channels, h, kh, w, kw], np.int64))],
        f"{name}_grid",
        x8.value.dtype,
    )
    moved = emit.node("Transpose", [grid], f"{name}_moved", x8.value.dtype, perm=[0, 2, 4, 1, 3, 5])
    patches = emit.node(
        "Reshape",
        [moved, emit.const(f"{name}_rows", np.array([0, h * w, channels * kh * kw], np.int64))],
        f"{name}_patches",
        x8.value.dtype,
    )
    matrix = weight.reshape(out_channels, -1).T.astype(np.float32)  # [C·k·k, O]
    spec = symmetric_per_channel_spec(matrix, axis=1, bits=8, unsigned_container=False)
    match = LinearMatch([node], node.inputs[0], matrix, False, spec, bias, node.outputs[0])
    acc = lower_linear(match, IntValue(patches, x8.scale, 0, -127, 127), emit, name)
    y16 = requantize_to(emit, acc, out_scale, 0, -RESIDUAL_GRID, RESIDUAL_GRID, f"{name}_y16")
    channels_first = emit.node("Transpose", [y16.value], f"{name}_channels_first", y16.value.dtype, perm=[0, 2, 1])
    image = emit.node(
        "Reshape",
        [channels_first, emit.const(f"{name}_image", np.array([0, out_channels, h, w], np.int64))],
        f"{name}_image",
        y16.value.dtype,
    )
    return IntValue(image, y16.scale, 0, -RESIDUAL_GRID, RESIDUAL_GRID)


class PatchConvIntoIntLinear(LoweringRule):
    """A patch-embedding Conv (stride = kernel, no padding, static input) → patchify + `IntLinear`."""

    op_types = ("Conv",)

    def match(self, ctx, node: ir.Node) -> MatchResult:
        if not is_patch_conv(node):
            return failed("not a patch convolution (constant 4-D weight, stride = kernel, no padding, static input)")
        return matched()

    def rewrite(self, ctx, node: ir.Node) -> None:
        name = node.name or node.outputs[0].name
        ctx.ints[id(node.outputs[0])] = lower_patch_conv(
            ctx.emit, node, ctx.integer(node.inputs[0]), ctx.scales[node.outputs[0].name], name
        )
