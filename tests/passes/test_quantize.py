"""Tests of the uniform quantize pass and the w8a8/w6a6/w4a4 recipes.

Expected scales and zero points follow the formulas of the pass's contract, computed here in float64:
weights ``s_c = max|W_c| / (2^(b-1) - 1)`` per output channel; activations over ``[min(lo, 0), max(hi, 0)]``
with ``s = (hi - lo) / (2^b - 1)`` and ``z = round(-lo / s)``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompile
from qcompile import PipelineContext, Property
from qcompile.errors import InputError
from qcompile.ir import quant_meta
from qcompile.ir.properties import get_properties
from qcompile.passes.analysis.calibrate import CalibrateRangesPass
from qcompile.passes.quantize.uniform import QuantizeUniformPass
from qcompile.runtime.qdq import to_qdq


def _calibrated(tiny):
    CalibrateRangesPass(context=PipelineContext(calibration=tiny.calibration, progress=False))(tiny.model)
    return tiny.model


def _values(model: ir.Model) -> dict[str, ir.Value]:
    values = {v.name: v for v in model.graph.inputs}
    values.update(model.graph.initializers)
    for node in model.graph:
        values.update({v.name: v for v in node.outputs})
    return values


def _run(model: ir.Model, feeds: dict[str, np.ndarray], optimize: bool = True) -> np.ndarray:
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    proto = ir.serde.serialize_model(model).SerializeToString()
    session = ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    reference, test = reference.astype(np.float64), test.astype(np.float64)
    return 10.0 * np.log10(np.sum(reference**2) / np.sum((reference - test) ** 2))


def _gemm_model(trans_b: int, weight: np.ndarray) -> ir.Model:
    k, n = weight.shape if not trans_b else weight.shape[::-1]
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], name="gemm", transB=trans_b)],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
        [numpy_helper.from_array(weight, "w")],
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_matmul_weights_get_symmetric_per_channel_specs_on_the_last_axis(tiny) -> None:
    model = _calibrated(tiny)
    result = QuantizeUniformPass()(model)

    weights = [n.inputs[1] for n in model.graph if n.op_type == "MatMul" and n.inputs[1].const_value is not None]
    assert len(weights) == 6 and result.stats["weights"] == 6
    for value in weights:
        spec = quant_meta.get_quant(value)
        w = value.const_value.numpy().astype(np.float64)
        assert spec.axis == 1 and spec.bits == 8
        np.testing.assert_allclose(spec.scale, np.abs(w).max(axis=0) / 127, rtol=1e-6)
        # uint8 container by default: zero point 128, codes 128 ± 127
        assert not spec.signed and np.all(spec.zero_point == 128)
        codes = spec.quantize(w)
        assert codes.min() >= 1 and codes.max() <= 255
        assert np.all(np.abs(codes - 128).max(axis=0) == 127)  # each column's largest |w| hits the top code


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_weights_are_quantized_along_the_output_channel_axis(trans_b: int) -> None:
    rng = np.random.default_rng(5)
    w_kn = rng.normal(0, 1, (6, 4)).astype(np.float32) * np.array([0.1, 1.0, 10.0, 3.0], np.float32)
    weight = w_kn.T.copy() if trans_b else w_kn
    model = _gemm_model(trans_b, weight)
    data = qcompile.CalibrationData.from_list([{"x": rng.normal(0, 1, (8, 6)).astype(np.float32)}])
    qcompile.run_passes(model, "calibrate,quantize", context=PipelineContext(calibration=data, progress=False))

    spec = quant_meta.get_quant(model.graph.initializers["w"])

    assert spec.axis == (0 if trans_b else 1)
    np.testing.assert_allclose(spec.scale, np.abs(w_kn.astype(np.float64)).max(axis=0) / 127, rtol=1e-6)
    x = rng.normal(0, 1, (3, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(to_qdq(model), {"x": x}), x @ w_kn, rtol=0, atol=0.05 * np.abs(x @ w_kn).max())


def test_activations_get_per_tensor_asymmetric_specs_from_their_ranges(tiny) -> None:
    model = _calibrated(tiny)
    QuantizeUniformPass(act_bits=6)(model)

    activations = [v for v in _values(model).values() if quant_meta.get_range(v) is not None]
    assert len(activations) == 8
    for value in activations:
        spec, tensor_range = quant_meta.get_quant(value), quant_meta.get_range(value)
        lo, hi = min(tensor_range.lo, 0.0), max(tensor_range.hi, 0.0)
        scale = (hi - lo) / 63
        assert spec.axis is None and spec.bits == 6 and not spec.signed
        assert float(spec.scale) == pytest.approx(scale, rel=1e-6)
        assert int(spec.zero_point) == int(np.clip(np.round(-lo / scale), 0, 63))
        # The whole calibrated range is representable within half a step.
        grid_lo, grid_hi = spec.dequantize(np.array([0, 63]))
        assert grid_lo <= lo + scale / 2 and grid_hi >= hi - scale / 2


def test_keep_float_softmax_leaves_the_attention_probabilities_float(tiny) -> None:
    model = _calibrated(tiny)
    result = QuantizeUniformPass(keep_float="Softmax")(model)
    assert quant_meta.get_quant(_values(model)["probs"]) is None
    assert quant_meta.get_quant(_values(model)["v.h"]) is not None  # the other AV input still is
    assert result.stats["kept_float"] == 1 and result.stats["activations"] == 7


def test_without_keep_float_the_attention_probabilities_are_quantized(tiny) -> None:
    model = _calibrated(tiny)
    result = QuantizeUniformPass()(model)
    spec = quant_meta.get_quant(_values(model)["probs"])
    assert spec is not None and spec.axis is None
    assert result.stats["kept_float"] == 0 and result.stats["activations"] == 8


def test_a_second_run_changes_nothing_and_says_so(tiny) -> None:
    model = _calibrated(tiny)
    first = QuantizeUniformPass(keep_float="Softmax")(model)
    specs = {name: quant_meta.get_quant(v) for name, v in _values(model).items()}

    second = QuantizeUniformPass(keep_float="Softmax")(model)

    assert first.modified and not second.modified
    assert second.stats["weights"] == 0 and second.stats["activations"] == 0
    assert {name: quant_meta.get_quant(v) for name, v in _values(model).items()} == specs


def test_a_second_quantize_in_one_pass_list_records_modified_false(tiny) -> None:
    records = qcompile.run_passes(tiny.model, "w8a8,quantize:keep_float=Softmax", calibration=tiny.calibration)
    assert [r["modified"] for r in records] == [True, True, False]


def test_quantize_establishes_quantized_and_keeps_calibrated(tiny) -> None:
    model = _calibrated(tiny)
    QuantizeUniformPass()(model)
    assert get_properties(model) == {Property.CALIBRATED, Property.QUANTIZED}


@pytest.mark.parametrize("bits", range(2, 9))
def test_every_bit_width_from_2_to_8_is_accepted(tiny, bits: int) -> None:
    model = _calibrated(tiny)
    QuantizeUniformPass(weight_bits=bits, act_bits=bits)(model)
    weight = model.graph.initializers["fc1.weight"]
    spec = quant_meta.get_quant(weight)
    codes = spec.quantize(weight.const_value.numpy()) - spec.zero_point
    assert spec.bits == bits and np.abs(codes).max() == 2 ** (bits - 1) - 1
    assert quant_meta.get_quant(_values(model)["ln2.out"]).bits == bits


@pytest.mark.parametrize("option", ["weight_bits", "act_bits"])
@pytest.mark.parametrize("bits", [1, 9])
def test_bit_widths_outside_2_to_8_are_rejected(option: str, bits: int) -> None:
    with pytest.raises(ValueError, match=f"{option} must be in 2..8, got {bits}"):
        QuantizeUniformPass(**{option: bits})


def test_an_unknown_weight_dtype_is_rejected() -> None:
    with pytest.raises(ValueError, match="weight_dtype must be one of"):
        QuantizeUniformPass(weight_dtype="int4")


@pytest.mark.parametrize("bits", [8, 4])
def test_int8_and_uint8_weight_containers_dequantize_to_identical_weights(bits: int) -> None:
    from qcompile.testing.builders import tiny_encoder

    unsigned, signed = _calibrated(tiny_encoder()), _calibrated(tiny_encoder())
    QuantizeUniformPass(weight_bits=bits, weight_dtype="uint8")(unsigned)
    QuantizeUniformPass(weight_bits=bits, weight_dtype="int8")(signed)

    for name, value in unsigned.graph.initializers.items():
        u_spec, s_spec = quant_meta.get_quant(value), quant_meta.get_quant(signed.graph.initializers[name])
        if u_spec is None:
            assert s_spec is None
            continue
        w = value.const_value.numpy()
        assert not u_spec.signed and s_spec.signed and np.all(s_spec.zero_point == 0)
        np.testing.assert_array_equal(u_spec.fake_quantize(w), s_spec.fake_quantize(w))
    # The QDQ graphs compute the same function. (Without graph optimizations: ONNX Runtime's fused u8×s8
    # kernels saturate on AVX2 machines without VNNI, which is a property of the kernels, not of the model.)
    feeds = tiny_encoder().feeds
    np.testing.assert_array_equal(
        _run(to_qdq(unsigned), feeds, optimize=False), _run(to_qdq(signed), feeds, optimize=False)
    )


def test_activations_without_a_range_are_skipped_with_a_reason(tiny) -> None:
    CalibrateRangesPass(op_types="Gemm", context=PipelineContext(calibration=tiny.calibration, progress=False))(
        tiny.model
    )
    result = QuantizeUniformPass()(tiny.model)
    assert result.stats["activations"] == 0 and result.stats["weights"] == 6
    assert result.stats["skipped"]["fc2/MatMul"] == "input 0 'gelu' has no calibrated range"


def test_a_model_without_the_op_types_is_an_input_error(tiny) -> None:
    model = _calibrated(tiny)
    with pytest.raises(InputError, match="found no Conv node to quantize"):
        QuantizeUniformPass(op_types="Conv")(model)


def test_a_constant_first_input_gets_a_per_tensor_spec() -> None:
    rng = np.random.default_rng(6)
    a = rng.normal(0, 1, (3, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "x"], ["y"], name="mm")],
        "const_a",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, "n"])],
        [numpy_helper.from_array(a, "a")],
    )
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    data = qcompile.CalibrationData.from_list([{"x": rng.normal(0, 1, (4, 5)).astype(np.float32)}])
    qcompile.run_passes(model, "calibrate,quantize", context=PipelineContext(calibration=data, progress=False))
    spec = quant_meta.get_quant(model.graph.initializers["a"])
    assert spec.axis is None and float(spec.scale) == pytest.approx(np.abs(a).max() / 127, rel=1e-6)


def test_sqnr_of_the_uniform_recipes_falls_with_the_bit_width() -> None:
    from qcompile.testing.builders import tiny_encoder

    reference = _run(tiny_encoder().model, tiny_encoder().feeds)
    sqnr = {}
    for recipe in ("w8a8", "w6a6", "w4a4"):
        tiny = tiny_encoder()
        qcompile.run_passes(tiny.model, recipe, context=PipelineContext(calibration=tiny.calibration, progress=False))
        sqnr[recipe] = _sqnr_db(reference, _run(to_qdq(tiny.model), tiny.feeds))
    assert sqnr["w8a8"] > sqnr["w6a6"] > sqnr["w4a4"] > 0, sqnr
    # Each 2 bits fewer costs several dB (ideal uniform quantization: about 12 dB).
    assert sqnr["w8a8"] - sqnr["w6a6"] > 3 and sqnr["w6a6"] - sqnr["w4a4"] > 3, sqnr


def test_weight_mse_search_picks_per_channel_thresholds_no_worse_than_minmax() -> None:
    from qcompile.passes.quantize.params import CLIP_RATIOS, symmetric_per_channel_spec

    rng = np.random.default_rng(3)
    weight = rng.standard_t(3, size=(64, 16)).astype(np.float32)
    minmax = symmetric_per_channel_spec(weight, axis=1, bits=4, unsigned_container=False, search="minmax")
    mse = symmetric_per_channel_spec(weight, axis=1, bits=4, unsigned_container=False, search="mse")
    err_minmax = ((minmax.fake_quantize(weight) - weight) ** 2).sum(axis=0)
    err_mse = ((mse.fake_quantize(weight) - weight) ** 2).sum(axis=0)
    assert np.all(err_mse <= err_minmax + 1e-6)
    assert err_mse.sum() < 0.9 * err_minmax.sum()  # heavy-tailed rows: clipping pays at 4 bits
    # each threshold is one of the grid's ratios of the channel's max |w|
    ratios = mse.scale.astype(np.float64) * 7 / np.abs(weight.astype(np.float64)).max(axis=0)
    assert np.all(np.min(np.abs(ratios[:, None] - np.array(CLIP_RATIOS)[None, :]), axis=1) < 1e-5)
    # exhaustive check of the choice for one channel
    column = weight[:, 0].astype(np.float64)
    errors = []
    for ratio in CLIP_RATIOS:
        step = max(ratio * np.abs(column).max(), 1e-12) / 7
        errors.append(np.sum((column - np.clip(np.rint(column / step), -7, 7) * step) ** 2))
    assert abs(ratios[0] - CLIP_RATIOS[int(np.argmin(errors))]) < 1e-5


def test_unknown_weight_search_is_rejected() -> None:
    with pytest.raises(ValueError, match="weight_search"):
        QuantizeUniformPass(weight_search="kl")
