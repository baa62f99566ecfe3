"""Concat of float tensors on the output's calibrated grid (the CLS token joining the patch tokens).

Every part p_i ≈ q_i·s_i (+ o_i) is requantized to the one symmetric 22-bit grid S calibrated for the
output, then the codes are concatenated: Concat(q'_0, q'_1, …)·S ≈ Concat(p_0, p_1, …).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.passes.lowering.int_value import IntValue, container
from qcompile.passes.lowering.ranges import RESIDUAL_GRID
from qcompile.passes.lowering.rule_base import LoweringRule, MatchResult, failed, matched, output_on_calibrated_grid

__all__ = ["ConcatOnGrid"]


class ConcatOnGrid(LoweringRule):
    """Concat of float32 tensors → Concat of codes on the output's calibrated grid."""

    op_types = ("Concat",)

    def match(self, ctx, node: ir.Node) -> MatchResult:
        return matched() if node.outputs[0].dtype == ir.DataType.FLOAT else failed("output is not float32")

    def check(self, ctx, node: ir.Node) -> MatchResult:
        return output_on_calibrated_grid(ctx, node)

    def rewrite(self, ctx, node: ir.Node) -> None:
        name = node.name or node.outputs[0].name
        grid = ctx.scales[node.outputs[0].name]
        dtype = container(-RESIDUAL_GRID, RESIDUAL_GRID)
        parts = []
        for index, value in enumerate(node.inputs):
            source = ctx.regrid(ctx.integer(value), grid, 0, -RESIDUAL_GRID, RESIDUAL_GRID, f"{name}_part{index}")
            parts.append(ctx.emit.cast(source.value, dtype, f"{name}_part{index}_cast"))
        axis = node.attributes.get_int("axis", 0)
        out = ctx.emit.node("Concat", parts, f"{node.outputs[0].name}_q", dtype, axis=axis)
        ctx.ints[id(node.outputs[0])] = IntValue(out, np.float64(grid), 0, -RESIDUAL_GRID, RESIDUAL_GRID)
