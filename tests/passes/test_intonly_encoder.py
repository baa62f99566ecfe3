"""`intonly` on the tiny encoder block (LayerNorm, attention, GELU MLP, residual adds; fused and
decomposed LayerNorm, LayerScale, a final norm): no float between the quantizers, bit-exact against the
reference interpreter, and within a stated distance of the QDQ model."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import qcompile
from qcompile import PipelineContext, runtime
from qcompile.intops.reference import run_reference
from qcompile.passes.lowering.intonly import IntOnlyPass, float_values
from qcompile.pipeline.numerics import sqnr_db
from qcompile.runtime import qdq
from qcompile.testing.builders import tiny_encoder


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"decomposed_layernorm": True},
        {"layer_scale": True, "final_norm": True},
        {"decomposed_layernorm": True, "final_norm": True},
    ],
    ids=["fused", "decomposed", "layerscale+final", "decomposed+final"],
)
def test_tiny_encoder_lowers_to_integers(options) -> None:
    tiny = tiny_encoder(**options)
    reference = runtime.run(runtime.make_session(tiny.model), tiny.feeds)["y"]
    context = PipelineContext(calibration=tiny.calibration, progress=False)
    qcompile.run_passes(tiny.model, "w8a8", context=context)
    fake_quant = runtime.run(runtime.make_session(qdq.to_qdq(tiny.model)), tiny.feeds)["y"]
    result = IntOnlyPass(context=context)(tiny.model)
    model = tiny.model
    assert float_values(model) == [] and result.stats["float_values"] == []
    ops = {n.op_type for n in model.graph}
    assert {"ILayerNorm", "IntAdd", "IntLinear", "IBertSoftmax", "Lookup"} <= ops  # GELU by table: measured best
    assert not ops & {"LayerNormalization", "Softmax", "Erf", "ReduceMean", "Sqrt", "Pow"}
    integer = runtime.run(runtime.make_session(model), tiny.feeds)["y"]
    np.testing.assert_array_equal(run_reference(ir.serde.serialize_model(model), tiny.feeds)["y"], integer)
    # the integer model adds integer LayerNorm/softmax/GELU and an int16 residual grid to QDQ's error
    assert sqnr_db(reference, integer) > sqnr_db(reference, fake_quant) - 3.0, (
        sqnr_db(reference, integer),
        sqnr_db(reference, fake_quant),
    )


def test_cli_writes_the_integer_artifact(tmp_path) -> None:
    import json

    from qcompile.cli import main

    out = tmp_path / "out"
    code = main(
        [
            "zoo:tiny",
            "--passes",
            "w8a8,intonly",
            "-o",
            str(out),
            "--calib-samples",
            "8",
            "--eval-samples",
            "16",
            "--quiet",
            "--no-baselines",
        ]
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.int.onnx", "report.html", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert report["artifact"] == "model.int.onnx"
    stats = report["per_pass"][-1]["stats"]
    assert report["per_pass"][-1]["name"] == "intonly" and stats["float_values"] == [] and stats["float_ops"] == []
    model = ir.load(out / "model.int.onnx")
    assert float_values(model) == []  # the check on the saved file, through the metadata_props tags


def test_export_int_refuses_a_model_that_was_not_lowered(tmp_path) -> None:
    from qcompile.backends.onnx import export
    from qcompile.errors import InputError

    with pytest.raises(InputError, match="'intonly'"):
        export(tiny_encoder().model, tmp_path / "m.onnx", fmt="int")
    assert not (tmp_path / "m.onnx").exists()


def test_auto_picks_each_sites_variant_by_measured_error_and_reports_it() -> None:
    tiny = tiny_encoder()
    context = PipelineContext(calibration=tiny.calibration, progress=False)
    qcompile.run_passes(tiny.model, "w8a8", context=context)
    stats = IntOnlyPass(context=context)(tiny.model).stats
    assert set(stats["variants"]) == {"softmax", "gelu"}
    assert len(stats["variants"]["softmax"]) == 1 and len(stats["variants"]["gelu"]) == 1
    kernels = {n.op_type for n in tiny.model.graph}
    for kind, names in (
        ("softmax", {"ibert": "IBertSoftmax", "shiftmax": "Shiftmax"}),
        ("gelu", {"ibert": "IntGELU", "shiftgelu": "ShiftGELU", "table": "Lookup"}),
    ):
        ((site, choice),) = stats["variants"][kind].items()
        errors = stats["variant_mse"][kind][site]
        assert choice == min(errors, key=errors.get) and set(errors) == set(names)
        assert names[choice] in kernels and all(names[other] not in kernels for other in names if other != choice)


def test_unknown_gelu_variant_is_rejected() -> None:
    with pytest.raises(ValueError, match="gelu must be one of"):
        IntOnlyPass(gelu="tanh")


def test_repq_then_intonly_lowers_and_reports_the_log_quantizer_it_replaces() -> None:
    tiny = tiny_encoder()
    reference = runtime.run(runtime.make_session(tiny.model), tiny.feeds)["y"]
    context = PipelineContext(calibration=tiny.calibration, progress=False)
    records = qcompile.run_passes(tiny.model, "repq", context=context)
    assert [r["name"] for r in records] == ["repq-ln", "log-softmax", "calibrate", "quantize"]
    fake_quant = runtime.run(runtime.make_session(qdq.to_qdq(tiny.model)), tiny.feeds)["y"]
    stats = IntOnlyPass(context=context)(tiny.model).stats
    (probabilities,) = [n.outputs[0].name for n in tiny_encoder().model.graph if n.op_type == "Softmax"]
    assert stats["replaced_quantizers"] == {probabilities: "log_sqrt2"} and stats["float_ops"] == []
    integer = runtime.run(runtime.make_session(tiny.model), tiny.feeds)["y"]
    np.testing.assert_array_equal(run_reference(ir.serde.serialize_model(tiny.model), tiny.feeds)["y"], integer)
    # the 16-bit integer probabilities are finer than the 8-bit log√2 codes they replace (measured 32.8 dB
    # against QDQ's 30.2 dB): the lowering must not lose more than its other kernels cost
    assert sqnr_db(reference, integer) > sqnr_db(reference, fake_quant) - 1.0, (
        sqnr_db(reference, integer),
        sqnr_db(reference, fake_quant),
    )


def test_the_float_weights_replaced_by_integer_codes_leave_the_model() -> None:
    tiny = tiny_encoder()
    context = PipelineContext(calibration=tiny.calibration, progress=False)
    qcompile.run_passes(tiny.model, "w8a8", context=context)
    floats_before = sum(v.dtype == ir.DataType.FLOAT for v in tiny.model.graph.initializers.values())
    stats = IntOnlyPass(context=context)(tiny.model).stats
    read = {id(v) for node in tiny.model.graph for v in node.inputs if v is not None}
    assert stats["removed_initializers"] >= 4 and floats_before >= 4  # at least the linears' float weights
    assert all(id(v) in read for v in tiny.model.graph.initializers.values())
