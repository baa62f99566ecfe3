"""Per-site clip ratios for the per-token activation quantizers of `quantize` (`act_clip_ratio=search`).

The search itself is `qcompile.calibration.token_clip` (E(r) = Σ_rows Σ_j g_j (x_j − x̂_{r,j})²). This module
finds each site's channel weights g = diag(W Wᵀ) summed over the linears that read the site with a constant
weight W (MatMul B[..., K, N]: Σ over N of W²; Gemm B likewise along its output axis), and runs the
search on the calibration data of the pipeline.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.calibration.token_clip import search_token_clip
from qcompile.errors import InputError
from qcompile.passes.quantize.uniform import weight_reduction_axis
from qcompile.pipeline.context import PipelineContext

__all__ = ["channel_weights", "search_site_clip_ratios"]


def channel_weights(value: ir.Value, op_types: tuple[str, ...]) -> np.ndarray | None:
    """g_j = Σ over the consumers `op_types` that multiply `value` (input 0) by a constant weight of that
    weight's squared entries in input row j; None when no such consumer exists (then g = 1)."""
    total = None
    for node in value.consumers():
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        if node.op_type not in op_types or node.inputs[0] is not value or weight is None:
            continue
        if weight.const_value is None or node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
            continue
        array = weight.const_value.numpy().astype(np.float64)
        if array.ndim < 2:
            continue
        axis = weight_reduction_axis(node, array.ndim)
        squares = np.moveaxis(array**2, axis, 0).reshape(array.shape[axis], -1).sum(axis=1)
        total = squares if total is None else total + squares
    return total


def search_site_clip_ratios(
    model: ir.Model,
    values: list[ir.Value],
    op_types: tuple[str, ...],
    bits: int,
    symmetric: bool,
    context: PipelineContext,
) -> dict[str, float]:
    """Value name → the clip ratio `search_token_clip` picks for it."""
    if context.calibration is None:
        raise InputError("quantize with act_clip_ratio=search needs calibration data (none was given)")
    weights = {value.name: channel_weights(value, op_types) for value in values}
    return search_token_clip(
        model,
        weights,
        bits,
        symmetric,
        context.calibration,
        seed=context.seed,
        threads=context.threads,
        progress=context.progress,
    )
