"""RecordRanges keeps the calibrated ranges of quantized activations, with their consumers, until lowering."""

from __future__ import annotations

import pytest

from qcompile import zoo
from qcompile.ir import quant_meta
from qcompile.pipeline.run import run_passes
from qcompile.report.ranges import RecordRanges, calibration_ranges


@pytest.fixture(scope="module")
def tiny():
    return zoo.get("tiny")


def test_ranges_list_every_quantized_activation_with_raw_and_chosen_bounds(tiny) -> None:
    model = tiny.load()
    run_passes(model, "w8a8", calibration=tiny.calibration(8, 0))
    ranges = calibration_ranges(model)
    values = {v.name: v for node in model.graph for v in node.outputs} | {v.name: v for v in model.graph.inputs}
    expected = [
        name
        for name, value in values.items()
        if quant_meta.get_range(value) is not None and quant_meta.get_quant(value) is not None
    ]
    assert sorted(r["value"] for r in ranges) == sorted(expected) and ranges
    for item in ranges:
        observed = quant_meta.get_range(values[item["value"]])
        assert (item["raw_min"], item["raw_max"], item["lo"], item["hi"]) == (
            observed.raw_min,
            observed.raw_max,
            observed.lo,
            observed.hi,
        )
        assert item["consumers"] == [user.outputs[0].name for user, _ in values[item["value"]].uses()]


def test_the_instrument_keeps_the_last_snapshot_before_the_model_is_integer_only(tiny) -> None:
    model = tiny.load()
    recorder = RecordRanges()
    run_passes(model, "repq,intonly", calibration=tiny.calibration(8, 0), instruments=[recorder])
    assert recorder.ranges, "the quantized model's ranges were recorded"
    assert {r["observer"] for r in recorder.ranges} >= {"repq"}  # RepQ's pinned LayerNorm ranges among them
    assert all(r["lo"] <= r["hi"] and r["raw_min"] <= r["raw_max"] for r in recorder.ranges)


def test_every_modifying_pass_records_its_output_sqnr_against_the_float_model(tiny) -> None:
    model = tiny.load()
    records = run_passes(model, "w8a8", calibration=tiny.calibration(8, 0))
    calibrate, quantize = records
    assert calibrate["sqnr_vs_float_db"] == float("inf")  # calibrate is EXACT: outputs identical to float
    # quantize is the first lossy pass, so its SQNR against float is its SQNR against the model before it
    assert quantize["sqnr_vs_float_db"] == pytest.approx(quantize["sqnr_db"], rel=1e-12)
