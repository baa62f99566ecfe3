"""Calibrated scales for the values whose integer grid no QuantSpec fixes: graph inputs that feed
non-linear ops, the sums of residual adds, and LayerNorm inputs (which may arrive with an offset, e.g.
embeddings plus a constant, and must be re-gridded before the integer LayerNorm), and convolution
outputs (the patch embedding's accumulator is re-gridded before its layout changes).

One streaming pass of the float model over the calibration data (min/max observers, `calibration.runner`)
gives max|v|; the value then lives on a symmetric int16 grid S = max|v| / 32767 (the residual stream is
int16, as in I-ViT). Values outside the calibrated range saturate.
"""

from __future__ import annotations

import onnx_ir as ir

from qcompile.calibration.observers import make_observer
from qcompile.calibration.runner import stream_statistics
from qcompile.errors import InputError
from qcompile.ir import const_array, quant_meta
from qcompile.passes.transforms.residual_stream import find_norms
from qcompile.pipeline.context import PipelineContext

__all__ = ["RESIDUAL_GRID", "is_residual_add", "values_needing_ranges", "calibrate_scales"]

RESIDUAL_GRID = 2**15 - 1


def is_residual_add(node: ir.Node) -> bool:
    """An Add of two computed tensors (a residual connection), not a bias or constant add."""
    return node.op_type == "Add" and node.domain in ("", "ai.onnx") and all(v is not None and const_array(v) is None for v in node.inputs)


def values_needing_ranges(model: ir.Model) -> list[ir.Value]:
    """Float graph inputs without a QuantSpec, outputs of adds of two computed tensors, LayerNorm
    inputs and Conv outputs, each once, in graph order."""
    wanted = [v for v in model.graph.inputs if quant_meta.get_quant(v) is None and v.dtype in (None, ir.DataType.FLOAT)]
    wanted += [node.outputs[0] for node in model.graph if is_residual_add(node)]
    wanted += [norm.input for norm in find_norms(model.graph)]
    wanted += [node.outputs[0] for node in model.graph if node.op_type == "Conv"]
    unique: dict[int, ir.Value] = {}
    for value in wanted:
        unique.setdefault(id(value), value)
    return list(unique.values())


def calibrate_scales(model: ir.Model, values: list[ir.Value], context: PipelineContext) -> dict[str, float]:
    """{value name: int16 grid scale} from the calibration data."""
    if not values:
        return {}
    if context.calibration is None:
        raise InputError("pass 'intonly' needs calibration data for the residual stream's scales (none was given)")
    names = [v.name for v in values]
    observers, _ = stream_statistics(
        model, context.calibration, names, lambda _: make_observer("minmax", bits=16, symmetric=True), channel_stats=False, threads=context.threads, progress=context.progress
    )
    return {name: max(float(observers[name].range()[1]), 1e-12) / RESIDUAL_GRID for name in names}

