"""fp-quantize (LLM-FP4): the search against its own objective and format preferences on data of known shape,
the pre-shifted exponent biases, the pass on the tiny encoder and the tiny Llama (every linear but the head
quantized, the QDQ artifact equal to the quantizers applied by hand), a Gemm with transB, and errors."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from qcompile import runtime
from qcompile.errors import InputError
from qcompile.frontends.onnx import load
from qcompile.ir import quant_meta
from qcompile.math.fp_formats import fp_format
from qcompile.passes.quantize.fp_quantize import FpQuantizePass
from qcompile.passes.quantize.fp_search import channel_shifts, search_site
from qcompile.pipeline.context import CalibrationData, PipelineContext
from qcompile.pipeline.run import run_passes
from qcompile.runtime.qdq import to_qdq
from qcompile.testing.tiny_llama import VOCAB
from qcompile.zoo.lm_export import prefill_feeds


def _relative_error(x: np.ndarray, w: np.ndarray, choice) -> float:
    target = x @ w
    got = choice.act_spec.fake_quantize(x) @ choice.weight_specs[0].fake_quantize(w)
    return float(((target - got) ** 2).sum() / (target**2).sum())


def test_the_search_lowers_its_objective_and_reports_it_honestly() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_t(4, (256, 32)).astype(np.float32)
    w = rng.normal(size=(32, 16)).astype(np.float32)
    for mode in ("tensor", "token"):
        start = search_site(x, [w], ("e2m1",), mode, rounds=0)
        searched = search_site(x, [w], ("e2m1",), mode, rounds=2)
        assert searched.error < start.error
        assert searched.error == pytest.approx(_relative_error(x, w, searched), rel=1e-6)
        assert start.error == pytest.approx(_relative_error(x, w, start), rel=1e-6)


def test_the_format_follows_the_data() -> None:
    """Uniform values favour mantissa bits (E1M2), heavy tails (Student t with 2 degrees of freedom: no
    variance) favour exponent bits (E3M0); the site takes the format of least error."""
    rng = np.random.default_rng(1)
    w = rng.uniform(-1, 1, (32, 16)).astype(np.float32)
    formats = ("e2m1", "e3m0", "e1m2")
    uniform = search_site(rng.uniform(-1, 1, (256, 32)).astype(np.float32), [w], formats, "tensor", False, 1)
    spread = search_site(rng.standard_t(2, (256, 32)).astype(np.float32), [w], formats, "tensor", False, 1)
    assert uniform.errors_by_format["e1m2"] < uniform.errors_by_format["e3m0"]
    assert spread.errors_by_format["e3m0"] < spread.errors_by_format["e1m2"]
    for choice in (uniform, spread):
        assert choice.fmt == min(choice.errors_by_format, key=choice.errors_by_format.get)


def test_channel_shifts_are_the_rounded_octaves_below_the_largest_channel() -> None:
    x = np.array([[8.0, 1.0, 0.0, 3.0, -0.01]], dtype=np.float32)
    np.testing.assert_array_equal(channel_shifts(x, 2), [0, 3, 0, 1, 3])  # clamped to 2^E − 1 = 3
    np.testing.assert_array_equal(channel_shifts(x, 1), [0, 1, 0, 1, 1])


def test_encoder_sites_get_power_of_two_channel_shifts(tiny) -> None:
    (record,) = run_passes(tiny.model, "fp-quantize:bits=4", calibration=tiny.calibration)
    assert record["stats"]["sites"] and not record["stats"]["skipped"]
    for value in quant_meta.quantized_values(tiny.model.graph):
        spec = quant_meta.get_quant(value)
        assert spec.kind == "fp" and spec.fp_format in ("e2m1", "e3m0", "e1m2")
        if value.const_value is None:
            assert spec.axis == -1
            octaves = np.log2(spec.scale.max() / spec.scale)
            np.testing.assert_array_equal(octaves, np.rint(octaves))
            assert octaves.max() <= 2 ** fp_format(spec.fp_format).exponent_bits - 1
    got = runtime.run(runtime.make_session(to_qdq(tiny.model)), tiny.feeds)
    assert all(np.all(np.isfinite(v)) for v in got.values())


def _llama_calibration(model: ir.Model) -> CalibrationData:
    rng = np.random.default_rng(3)
    return CalibrationData.from_list(
        [prefill_feeds(model, rng.integers(0, VOCAB, (2, 32)).astype(np.int64)) for _ in range(2)]
    )


def test_decoder_linears_but_the_head_get_per_token_fp_and_8_bits_beat_4(tiny_llama_export) -> None:
    errors = {}
    ids = np.random.default_rng(4).integers(0, VOCAB, (2, 24)).astype(np.int64)
    reference_model = load(tiny_llama_export("pow2"))
    reference = runtime.run(runtime.make_session(reference_model), prefill_feeds(reference_model, ids), ["logits"])
    for bits in (4, 8):
        model = load(tiny_llama_export("pow2"))
        (record,) = run_passes(
            model, f"fp-quantize:bits={bits}:act_granularity=token", calibration=_llama_calibration(model)
        )
        stats = record["stats"]
        assert list(stats["skipped"].values()) == ["kept float: its output is a graph output (the model's head)"]
        linears = [n for n in model.graph if n.op_type == "MatMul" and n.inputs[1].const_value is not None]
        quantized = [n for n in linears if quant_meta.get_quant(n.inputs[1]) is not None]
        assert len(quantized) == len(linears) == 14  # 7 linears per layer, 2 layers
        (head,) = [n for n in model.graph if n.outputs[0].name == "logits"]  # the tied head reads E transposed
        assert all(quant_meta.get_quant(v) is None for v in head.inputs)
        for node in quantized:
            assert quant_meta.get_quant(node.inputs[0]).kind == "fp_token"
            assert quant_meta.get_quant(node.inputs[1]).fp_format == stats["sites"][node.inputs[0].name]["format"]
        got = runtime.run(runtime.make_session(to_qdq(model)), prefill_feeds(model, ids), ["logits"])["logits"]
        errors[bits] = float(np.abs(got - reference["logits"]).max())
    assert errors[8] < errors[4]


def test_a_gemm_with_transposed_weight_is_quantized_per_output_channel() -> None:
    rng = np.random.default_rng(5)
    w = rng.normal(size=(6, 8)).astype(np.float32)  # [N, K] with transB=1
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 6])],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    data = [{"x": rng.normal(size=(16, 8)).astype(np.float32)} for _ in range(2)]
    run_passes(model, "fp-quantize:bits=8:keep_head_float=false", calibration=CalibrationData.from_list(data))
    spec = quant_meta.get_quant(model.graph.initializers["w"])
    assert spec.axis == 0 and spec.scale.shape == (6,)
    x = data[0]["x"]
    got = runtime.run(runtime.make_session(to_qdq(model)), {"x": x})["y"]
    expected = quant_meta.get_quant(model.graph.node(0).inputs[0]).fake_quantize(x) @ spec.fake_quantize(w).T
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_errors_are_clear(tiny) -> None:
    for options in ({"bits": 5}, {"bits": 4, "formats": "e4m3"}, {"act_granularity": "channel"}, {"rows": 0}):
        with pytest.raises(ValueError):
            FpQuantizePass(**options)
    with pytest.raises(InputError, match="calibration data"):
        FpQuantizePass(context=PipelineContext())(tiny.model)
    assert FpQuantizePass(formats="e2m1+e1m2").formats == ("e2m1", "e1m2")
