"""Calibrated scales for the values whose integer grid no QuantSpec fixes: graph inputs that feed
non-linear ops, the sums of residual adds, and LayerNorm inputs (which may arrive with an offset, e.g.
embeddings plus a constant, and must be re-gridded before the integer LayerNorm), convolution
outputs (the patch embedding's accumulator is re-gridded before its layout changes) and Concat outputs
(the CLS token and the patch tokens meet on one grid).

One streaming pass of the float model over the calibration data (min/max observers, `calibration.runner`)
gives max|v|; the value then lives on a symmetric 22-bit grid S = max|v| / (2^21 − 1), in int32. I-ViT
keeps the residual stream in int16; I-BERT requantizes LayerNorm inputs to 22 bits, and that is what the
zoo models need: DINOv2's residual stream carries massive activations (hundreds, against ~1 for most
tokens), so an int16 grid sized for them leaves normal tokens a few dozen levels before the integer
LayerNorm. Values outside the calibrated range saturate.
"""

from __future__ import annotations

import onnx_ir as ir

from qcompile.calibration.observers import make_observer
from qcompile.calibration.runner import stream_statistics
from qcompile.errors import InputError
from qcompile.ir import const_array, quant_meta
from qcompile.passes.lowering.gelu_rule import match_gelu
from qcompile.passes.transforms.residual_stream import find_norms
from qcompile.pipeline.context import PipelineContext

__all__ = ["RESIDUAL_GRID", "Ranges", "is_two_computed", "is_residual_add", "values_needing_ranges", "calibrate_scales"]

RESIDUAL_GRID = 2**21 - 1


def is_two_computed(node: ir.Node) -> bool:
    """A standard binary op whose two inputs are both computed tensors."""
    return (
        node.domain in ("", "ai.onnx")
        and len(node.inputs) == 2
        and all(v is not None and const_array(v) is None for v in node.inputs)
    )


def is_residual_add(node: ir.Node) -> bool:
    """An Add of two computed float tensors (a residual connection), not a bias or constant add, nor
    integer shape arithmetic."""
    return node.op_type == "Add" and is_two_computed(node) and node.outputs[0].dtype in (None, ir.DataType.FLOAT)


def values_needing_ranges(model: ir.Model) -> list[ir.Value]:
    """Float graph inputs without a QuantSpec, outputs of adds of two computed tensors, LayerNorm
    inputs, Conv outputs and the float operands of pooling/normalization ops, each once, in order."""
    wanted = [v for v in model.graph.inputs if quant_meta.get_quant(v) is None and v.dtype in (None, ir.DataType.FLOAT)]
    wanted += [node.outputs[0] for node in model.graph if is_residual_add(node)]
    wanted += [norm.input for norm in find_norms(model.graph)]
    wanted += [
        node.outputs[0]
        for node in model.graph
        if node.op_type in ("Conv", "Concat") and node.outputs[0].dtype in (None, ir.DataType.FLOAT)
    ]
    wanted += [
        node.outputs[0]
        for node in model.graph
        if node.op_type == "Cast"
        and node.inputs[0] is not None
        and node.inputs[0].dtype not in (None, ir.DataType.FLOAT)
    ]
    wanted += [node.outputs[0] for node in model.graph if node.op_type == "Div" and is_two_computed(node)]
    in_gelu = {id(n) for node in model.graph if (match := match_gelu(node)) is not None for n in match.nodes}
    for node in model.graph:  # operands of the pooling/normalization ops (reduce_rule), if not plain
        if id(node) in in_gelu:
            continue
        if node.op_type in ("ReduceSum", "ReduceL2", "Clip") or (
            node.op_type in ("Mul", "Div") and is_two_computed(node)
        ):
            wanted += [
                v
                for v in node.inputs[:2]
                if v is not None and const_array(v) is None and v.dtype in (None, ir.DataType.FLOAT)
            ]
    unique: dict[int, ir.Value] = {}
    for value in wanted:
        unique.setdefault(id(value), value)
    return list(unique.values())


class Ranges(dict):
    """{value name: int16 grid scale} (what most rules need), plus the raw calibrated [min, max] of each
    value in `bounds` (for integer-valued tensors such as masks, and for choosing shifts)."""

    def __init__(self, bounds: dict[str, tuple[float, float]]) -> None:
        super().__init__({name: max(abs(lo), abs(hi), 1e-12) / RESIDUAL_GRID for name, (lo, hi) in bounds.items()})
        self.bounds = bounds


def calibrate_scales(model: ir.Model, values: list[ir.Value], context: PipelineContext) -> Ranges:
    """The calibrated ranges of `values` (one streaming min/max pass over the calibration data)."""
    if not values:
        return Ranges({})
    if context.calibration is None:
        raise InputError("pass 'intonly' needs calibration data for the residual stream's scales (none was given)")
    names = [v.name for v in values]
    observers, _ = stream_statistics(
        model,
        context.calibration,
        names,
        lambda _: make_observer("minmax", bits=16),
        channel_stats=False,
        threads=context.threads,
        progress=context.progress,
    )
    return Ranges({name: (float(observers[name].min), float(observers[name].max)) for name in names})
