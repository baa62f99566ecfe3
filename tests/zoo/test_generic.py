"""`RandomInputTask` (zoo:tiny and ONNX files on random inputs): every load is a fresh model."""

from __future__ import annotations

from qcompile import zoo
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.run import run_passes


def test_load_hands_out_a_fresh_model_each_time() -> None:
    entry = zoo.get("tiny")
    first = entry.load()
    ops_before = [n.op_type for n in entry.load().graph]
    run_passes(first, "w8a8,intonly", context=PipelineContext(calibration=entry.calibration(8, 0), progress=False))
    assert [n.op_type for n in first.graph] != ops_before  # the lowering rewrote the loaded copy
    assert [n.op_type for n in entry.load().graph] == ops_before  # and the next load is untouched
    assert entry.load() is not entry.load()
