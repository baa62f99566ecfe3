"""Calibrate activation ranges: stream calibration batches through the float model and record, for every
activation that feeds a quantizable op, a `TensorRange` (observer's clipping range [lo, hi], raw min/max,
per-channel max|x| along the last axis). A range marked `pinned` (chosen by a reparameterization such as
`repq-ln`) is kept.

The model's computation is untouched, so the pass is EXACT; it establishes CALIBRATED.
"""

from __future__ import annotations

import onnx_ir as ir

from qcompile.calibration.memory import PeakRSS
from qcompile.calibration.observers import OBSERVERS, make_observer
from qcompile.calibration.runner import stream_statistics
from qcompile.errors import InputError
from qcompile.ir import quant_meta
from qcompile.ir.properties import Property
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.pass_base import Numerics, Pass, PassResult
from qcompile.pipeline.registry import register_pass

__all__ = ["CalibrateRangesPass", "activation_inputs", "parse_op_types"]

DEFAULT_OP_TYPES = ("MatMul", "Gemm")


def parse_op_types(op_types: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Accept "MatMul+Gemm" (CLI form, '+'-separated) or a sequence of op types."""
    if isinstance(op_types, str):
        op_types = [t for t in op_types.replace("+", " ").split() if t]
    if not op_types:
        raise InputError("op_types must name at least one op type")
    return tuple(op_types)


def activation_inputs(model: ir.Model, op_types: tuple[str, ...]) -> list[ir.Value]:
    """Non-constant float inputs (the first two) of every node whose op type is in `op_types`, in order."""
    seen: dict[int, ir.Value] = {}
    for node in model.graph:
        if node.op_type not in op_types or node.domain not in ("", "ai.onnx"):
            continue
        for value in node.inputs[:2]:
            if value is None or value.const_value is not None or ir.convenience.get_const_tensor(value) is not None:
                continue
            if value.dtype not in (None, ir.DataType.FLOAT):
                continue
            seen.setdefault(id(value), value)
    return list(seen.values())


@register_pass("calibrate")
class CalibrateRangesPass(Pass):
    """Stream calibration data through the float model; record activation ranges with an observer."""

    establishes = frozenset({Property.CALIBRATED})
    numerics = Numerics.EXACT

    def __init__(
        self,
        observer: str = "minmax",
        bits: int = 8,
        op_types: str | tuple[str, ...] = DEFAULT_OP_TYPES,
        context: PipelineContext | None = None,
        percentile: float | None = None,
        num_bins: int | None = None,
        num_candidates: int | None = None,
    ) -> None:
        if observer not in OBSERVERS:
            raise ValueError(f"unknown observer '{observer}' (choose from {', '.join(OBSERVERS)})")
        if not 2 <= int(bits) <= 8:
            raise ValueError(f"bits must be in 2..8, got {bits}")
        self.observer = observer
        self.bits = int(bits)
        self.op_types = parse_op_types(op_types)
        self.context = context or PipelineContext()
        # Observer options are explicit parameters so that `--passes calibrate:percentile=99.9` resolves them.
        options = {"percentile": percentile, "num_bins": num_bins, "num_candidates": num_candidates}
        self.observer_options = {k: v for k, v in options.items() if v is not None}
        make_observer(self.observer, bits=self.bits, symmetric=False, **self.observer_options)  # validate early

    def call(self, model: ir.Model) -> PassResult:
        data = self.context.calibration
        if data is None:
            raise InputError("pass 'calibrate' needs calibration data (none was given)")
        values = activation_inputs(model, self.op_types)
        names = [v.name for v in values]
        with PeakRSS() as peak:
            observers, channels = stream_statistics(
                model,
                data,
                names,
                lambda _: make_observer(self.observer, bits=self.bits, symmetric=False, **self.observer_options),
                threads=self.context.threads,
                progress=self.context.progress,
            )
        pinned = 0
        for value in values:
            existing = quant_meta.get_range(value)
            if existing is not None and existing.pinned:
                pinned += 1  # a reparameterization chose this range (e.g. repq-ln); keep it
                continue
            observer = observers[value.name]
            lo, hi = observer.range()
            quant_meta.set_range(
                value,
                quant_meta.TensorRange(
                    lo=float(lo),
                    hi=float(hi),
                    raw_min=float(observer.min),
                    raw_max=float(observer.max),
                    observer=self.observer,
                    samples=data.samples,
                    channel_absmax=channels[value.name].value if value.name in channels else None,
                ),
            )
        stats = {
            "values": len(values),
            "pinned_kept": pinned,
            "samples": data.samples,
            "observer": self.observer,
            "peak_rss_mb": peak.mb,
        }
        return PassResult(model, modified=bool(values), stats=stats)
