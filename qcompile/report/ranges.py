"""`RecordRanges`: an instrument that keeps the calibrated range of every quantized activation.

After each pass that leaves a model with quantizers (and before the model is integer-only, when lowering
has replaced the float activations), it snapshots, per activation value with both a `TensorRange` and a
`QuantSpec`: the observed [raw_min, raw_max], the clipping range [lo, hi] the observer chose, the observer,
and the outputs of the nodes that consume it (the names `per_layer` uses), so the report can show the
ranges feeding the worst layers. The latest snapshot is `RecordRanges.ranges`.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

from qcompile.ir import quant_meta
from qcompile.ir.properties import Property, get_properties
from qcompile.pipeline.pass_base import Pass, PassResult

__all__ = ["RecordRanges", "calibration_ranges"]


def calibration_ranges(model: ir.Model) -> list[dict[str, Any]]:
    """The calibrated, quantized activations of `model` in graph order (graph inputs first)."""
    values = [*model.graph.inputs, *(out for node in model.graph for out in node.outputs)]
    ranges = []
    for value in values:
        calibrated = quant_meta.get_range(value)
        if calibrated is None or quant_meta.get_quant(value) is None:
            continue
        ranges.append(
            {
                "value": value.name,
                "raw_min": float(calibrated.raw_min),
                "raw_max": float(calibrated.raw_max),
                "lo": float(calibrated.lo),
                "hi": float(calibrated.hi),
                "observer": calibrated.observer,
                "consumers": [user.outputs[0].name for user, _ in value.uses() if user.outputs],
            }
        )
    return ranges


class RecordRanges:
    """Snapshot `calibration_ranges` after every pass, while the model is not yet integer-only."""

    def __init__(self) -> None:
        self.ranges: list[dict[str, Any]] = []

    def before(self, pass_: Pass, model: ir.Model) -> None:
        del pass_, model

    def after(self, pass_: Pass, model: ir.Model, result: PassResult, record: dict[str, Any]) -> None:
        del pass_, result, record
        if Property.INTEGER_ONLY in get_properties(model):
            return
        ranges = calibration_ranges(model)
        if ranges:
            self.ranges = ranges
