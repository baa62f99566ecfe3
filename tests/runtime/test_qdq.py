"""Tests of `to_qdq`: QuantSpecs written as QuantizeLinear/DequantizeLinear, checked against a NumPy
fake-quantization written here from the ONNX operator definitions."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile import runtime
from qcompile.ir import model_to_bytes, quant_meta
from qcompile.ir.quant_meta import QuantSpec
from qcompile.ir.verifier import verify_model
from qcompile.runtime.qdq import MIN_OPSET, to_qdq

K, N = 16, 8


def fake_quant_activation(x: np.ndarray, scale: float, zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    """ONNX QuantizeLinear (float32 division, round half to even, saturate) then DequantizeLinear."""
    q = np.clip(np.round(x.astype(np.float32) / np.float32(scale)) + zero_point, qmin, qmax)
    return (q - zero_point) * np.float64(np.float32(scale))


def fake_quant_weight(w: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    """Symmetric per-output-channel (last axis) fake quantization, codes in ±(2^(b-1) - 1)."""
    limit = 2 ** (bits - 1) - 1
    scale = scale.astype(np.float32).astype(np.float64)
    return np.clip(np.round(w.astype(np.float64) / scale), -limit, limit) * scale


def _matmul_model(weight: np.ndarray, relu_first: bool = False, opset: int = 17) -> ir.Model:
    nodes = [helper.make_node("MatMul", ["a" if relu_first else "x", "w"], ["y"], name="mm")]
    if relu_first:
        nodes.insert(0, helper.make_node("Relu", ["x"], ["a"], name="relu"))
    graph = helper.make_graph(
        nodes,
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N])],
        [numpy_helper.from_array(weight, "w")],
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def _value(model: ir.Model, name: str) -> ir.Value:
    if name in model.graph.initializers:
        return model.graph.initializers[name]
    for value in model.graph.inputs:
        if value.name == name:
            return value
    return next(v for node in model.graph for v in node.outputs if v.name == name)


def _run_unoptimized(
    model: ir.Model, feeds: dict[str, np.ndarray], outputs: list[str] | None = None
) -> dict[str, np.ndarray]:
    session = runtime.make_session(runtime.with_outputs(model, outputs or []), optimize=False)
    return runtime.run(session, feeds, outputs)


@pytest.fixture
def weight() -> np.ndarray:
    return np.random.default_rng(0).normal(0, 0.3, (K, N)).astype(np.float32)


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(1).normal(0.5, 1.0, (5, K)).astype(np.float32)


def _weight_spec(weight: np.ndarray, bits: int, unsigned: bool) -> tuple[QuantSpec, np.ndarray]:
    scale = (np.abs(weight.astype(np.float64)).max(axis=0) / (2 ** (bits - 1) - 1)).astype(np.float32)
    zero = 2 ** (bits - 1) if unsigned else 0
    spec = QuantSpec(bits=bits, signed=not unsigned, scale=scale, zero_point=np.full(N, zero, np.int32), axis=1)
    return spec, scale


@pytest.mark.parametrize("relu_first", [False, True], ids=["activation_is_graph_input", "activation_after_a_node"])
@pytest.mark.parametrize("unsigned", [True, False], ids=["uint8_weight", "int8_weight"])
def test_qdq_matmul_equals_numpy_fake_quantized_matmul(weight, x, relu_first: bool, unsigned: bool) -> None:
    model = _matmul_model(weight, relu_first)
    act_scale, act_zero = 0.02, 37
    quant_meta.set_quant(
        _value(model, "a" if relu_first else "x"), QuantSpec(8, False, np.float32(act_scale), np.int32(act_zero))
    )
    spec, w_scale = _weight_spec(weight, 8, unsigned)
    quant_meta.set_quant(_value(model, "w"), spec)

    qdq = to_qdq(model)
    actual = _run_unoptimized(qdq, {"x": x})["y"]

    activation = np.maximum(x, 0) if relu_first else x
    expected = fake_quant_activation(activation, act_scale, act_zero, 0, 255) @ fake_quant_weight(weight, w_scale, 8)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)
    # The activation grid is coarse enough that quantization visibly changed the result.
    assert np.abs(actual - activation.astype(np.float64) @ weight).max() > 1e-3


def test_qdq_nodes_replace_the_float_weight_and_precede_their_consumers(weight) -> None:
    model = _matmul_model(weight, relu_first=True)
    quant_meta.set_quant(_value(model, "a"), QuantSpec(8, False, np.float32(0.02), np.int32(0)))
    quant_meta.set_quant(_value(model, "w"), _weight_spec(weight, 8, unsigned=True)[0])

    qdq = to_qdq(model)

    verify_model(qdq)
    assert [n.op_type for n in qdq.graph] == [
        "DequantizeLinear",
        "Relu",
        "QuantizeLinear",
        "DequantizeLinear",
        "MatMul",
    ]
    assert "w" not in qdq.graph.initializers
    codes = qdq.graph.initializers["w_quantized"].const_value.numpy()
    assert codes.dtype == np.uint8 and codes.shape == (K, N)
    weight_dq = qdq.graph.node(0)
    assert weight_dq.attributes["axis"].value == 1
    matmul = qdq.graph.node(4)
    assert [v.producer().op_type for v in matmul.inputs] == ["DequantizeLinear", "DequantizeLinear"]
    assert matmul.inputs[1] is weight_dq.outputs[0]


def test_a_4_bit_activation_gets_a_clip_that_keeps_codes_in_0_to_15(weight, x) -> None:
    model = _matmul_model(weight)
    scale, zero = 0.1, 3  # grid [-0.3, 1.2]: most of x lies outside it
    quant_meta.set_quant(_value(model, "x"), QuantSpec(4, False, np.float32(scale), np.int32(zero)))

    qdq = to_qdq(model)

    assert [n.op_type for n in qdq.graph] == ["QuantizeLinear", "Clip", "DequantizeLinear", "MatMul"]
    out = _run_unoptimized(qdq, {"x": x}, ["x_quantized", "x_clipped", "y"])
    assert out["x_quantized"].max() > 15  # QuantizeLinear alone saturates only to the uint8 range
    assert out["x_clipped"].min() == 0 and out["x_clipped"].max() == 15
    expected = fake_quant_activation(x, scale, zero, 0, 15) @ weight.astype(np.float64)
    np.testing.assert_allclose(out["y"], expected, rtol=0, atol=1e-5)


def test_a_signed_4_bit_activation_is_clipped_to_minus_8_to_7(weight, x) -> None:
    model = _matmul_model(weight)
    quant_meta.set_quant(_value(model, "x"), QuantSpec(4, True, np.float32(0.1), np.int32(0)))
    out = _run_unoptimized(to_qdq(model), {"x": x}, ["x_clipped", "y"])
    assert out["x_clipped"].dtype == np.int8
    assert out["x_clipped"].min() == -8 and out["x_clipped"].max() == 7
    np.testing.assert_allclose(
        out["y"], fake_quant_activation(x, 0.1, 0, -8, 7) @ weight.astype(np.float64), rtol=0, atol=1e-5
    )


def test_an_8_bit_activation_needs_no_clip(weight) -> None:
    model = _matmul_model(weight)
    quant_meta.set_quant(_value(model, "x"), QuantSpec(8, False, np.float32(0.1), np.int32(3)))
    assert [n.op_type for n in to_qdq(model).graph] == ["QuantizeLinear", "DequantizeLinear", "MatMul"]


@pytest.mark.parametrize("bits", [4, 6])
def test_low_bit_weights_take_codes_within_the_b_bit_range(weight, x, bits: int) -> None:
    model = _matmul_model(weight)
    spec, scale = _weight_spec(weight, bits, unsigned=False)
    quant_meta.set_quant(_value(model, "w"), spec)

    qdq = to_qdq(model)

    codes = qdq.graph.initializers["w_quantized"].const_value.numpy().astype(np.int32)
    limit = 2 ** (bits - 1) - 1
    assert codes.min() == -limit and codes.max() == limit
    np.testing.assert_allclose(
        _run_unoptimized(qdq, {"x": x})["y"],
        x.astype(np.float64) @ fake_quant_weight(weight, scale, bits),
        rtol=0,
        atol=1e-5,
    )


def test_to_qdq_leaves_the_original_model_untouched(tiny) -> None:
    import qcompile

    qcompile.run_passes(tiny.model, "w4a4", calibration=tiny.calibration, check_numerics=False)
    before = model_to_bytes(tiny.model)
    specs = {v.name: quant_meta.get_quant(v) for v in quant_meta.quantized_values(tiny.model.graph)}
    node_count = len(tiny.model.graph)

    qdq = to_qdq(tiny.model)

    assert model_to_bytes(tiny.model) == before
    assert len(tiny.model.graph) == node_count
    assert {v.name: quant_meta.get_quant(v) for v in quant_meta.quantized_values(tiny.model.graph)} == specs
    assert len(qdq.graph) > node_count  # the copy did get the QDQ nodes
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in tiny.model.graph)


def test_the_quantized_tiny_encoder_exports_to_a_valid_runnable_graph(tiny) -> None:
    import qcompile

    qcompile.run_passes(tiny.model, "w8a8", calibration=tiny.calibration, check_numerics=False)
    qdq = to_qdq(tiny.model)
    verify_model(qdq)
    onnx.checker.check_model(ir.serde.serialize_model(qdq), full_check=True)
    ops = [n.op_type for n in qdq.graph]
    # 6 weights and 7 activations (softmax output kept float), one Q/DQ pair each.
    assert ops.count("DequantizeLinear") == 13 and ops.count("QuantizeLinear") == 7
    assert _run_unoptimized(qdq, tiny.feeds)["y"].shape == tiny.feeds["x"].shape


def test_a_model_without_specs_is_copied_unchanged(weight) -> None:
    model = _matmul_model(weight, opset=11)
    out = to_qdq(model)
    assert out is not model
    assert [n.op_type for n in out.graph] == ["MatMul"] and out.opset_imports[""] == 11


def test_the_opset_is_raised_to_the_first_with_per_axis_qdq(weight, x) -> None:
    model = _matmul_model(weight, opset=11)
    spec, scale = _weight_spec(weight, 8, unsigned=True)
    quant_meta.set_quant(_value(model, "w"), spec)
    out = to_qdq(model)
    assert out.opset_imports[""] == MIN_OPSET
    np.testing.assert_allclose(
        _run_unoptimized(out, {"x": x})["y"],
        x.astype(np.float64) @ fake_quant_weight(weight, scale, 8),
        rtol=0,
        atol=1e-5,
    )


def test_a_graph_output_that_is_also_consumed_stays_float(weight, x) -> None:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Relu", ["h"], ["y"], name="relu")],
        "two_outputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])],
        [
            helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", N]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N]),
        ],
        [numpy_helper.from_array(weight, "w")],
    )
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    quant_meta.set_quant(_value(model, "h"), QuantSpec(8, True, np.float32(0.05), np.int32(0)))

    out = _run_unoptimized(to_qdq(model), {"x": x})

    h = x.astype(np.float64) @ weight
    np.testing.assert_allclose(out["h"], h, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        out["y"], np.maximum(fake_quant_activation(h.astype(np.float32), 0.05, 0, -128, 127), 0), rtol=0, atol=1e-5
    )


def test_a_shared_weight_is_dequantized_once_for_all_consumers(weight, x) -> None:
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["a"], name="mm1"),
            helper.make_node("MatMul", ["x", "w"], ["b"], name="mm2"),
            helper.make_node("Add", ["a", "b"], ["y"], name="add"),
        ],
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    spec, scale = _weight_spec(weight, 8, unsigned=False)
    quant_meta.set_quant(_value(model, "w"), spec)

    qdq = to_qdq(model)

    assert [n.op_type for n in qdq.graph].count("DequantizeLinear") == 1 and "w" not in qdq.graph.initializers
    expected = 2 * (x.astype(np.float64) @ fake_quant_weight(weight, scale, 8))
    np.testing.assert_allclose(_run_unoptimized(qdq, {"x": x})["y"], expected, rtol=0, atol=1e-5)


# --- log√2 activations (RepQ-ViT post-Softmax quantizer) ----------------------------------------------


def _log_spec(bits: int, delta: float) -> QuantSpec:
    return QuantSpec(bits, False, np.float32(delta), np.int32(0), None, kind="log_sqrt2")


def _softmax_model(weight: np.ndarray, softmax_is_output: bool = False) -> ir.Model:
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N])]
    if softmax_is_output:
        outputs.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", K]))
    graph = helper.make_graph(
        [
            helper.make_node("Softmax", ["x"], ["p"], axis=-1, name="softmax"),
            helper.make_node("MatMul", ["p", "w"], ["y"], name="mm"),
        ],
        "softmax_mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])],
        outputs,
        [numpy_helper.from_array(weight, "w")],
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_a_log_sqrt2_activation_becomes_the_qcompile_function_pair(weight, x) -> None:
    model = _softmax_model(weight)
    spec = _log_spec(4, 0.2)
    quant_meta.set_quant(_value(model, "p"), spec)
    w_spec, w_scale = _weight_spec(weight, 8, unsigned=False)
    quant_meta.set_quant(_value(model, "w"), w_spec)

    qdq = to_qdq(model)

    verify_model(qdq)
    onnx.checker.check_model(ir.serde.serialize_model(qdq), full_check=True)
    assert [(n.domain, n.op_type) for n in qdq.graph] == [
        ("", "DequantizeLinear"),
        ("", "Softmax"),
        ("qcompile", "QuantizeLogSqrt2"),
        ("qcompile", "DequantizeLogSqrt2"),
        ("", "MatMul"),
    ]
    assert qdq.opset_imports == {"": 14, "qcompile": 1}
    assert {name for _, name, _ in qdq.functions} == {"QuantizeLogSqrt2", "DequantizeLogSqrt2"}
    quantize, dequantize = qdq.graph.node(2), qdq.graph.node(3)
    assert quantize.inputs[0].name == "p" and quantize.outputs[0].dtype == ir.DataType.UINT8
    assert dequantize.inputs[0] is quantize.outputs[0]
    assert qdq.graph.initializers["p_delta"].const_value.numpy() == np.float32(0.2)
    assert qdq.graph.initializers["p_qmax"].const_value.numpy() == np.float32(15)
    assert qdq.graph.node(4).inputs[0] is dequantize.outputs[0]

    actual = _run_unoptimized(qdq, {"x": x})["y"]
    p = _softmax(x).astype(np.float32)
    expected = spec.fake_quantize(p).astype(np.float64) @ fake_quant_weight(weight, w_scale, 8)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)


def test_a_log_sqrt2_graph_output_stays_float(weight, x) -> None:
    model = _softmax_model(weight, softmax_is_output=True)
    spec = _log_spec(3, 0.5)
    quant_meta.set_quant(_value(model, "p"), spec)

    out = _run_unoptimized(to_qdq(model), {"x": x})

    np.testing.assert_allclose(out["p"], _softmax(x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out["y"], spec.fake_quantize(out["p"]).astype(np.float64) @ weight, rtol=0, atol=1e-5)


def test_two_log_sqrt2_activations_share_one_pair_of_functions(weight, x) -> None:
    graph = helper.make_graph(
        [
            helper.make_node("Softmax", ["x"], ["p"], axis=-1, name="sm1"),
            helper.make_node("Softmax", ["p"], ["p2"], axis=-1, name="sm2"),
            helper.make_node("MatMul", ["p2", "w"], ["y"], name="mm"),
        ],
        "two_softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]))
    first, second = _log_spec(4, 0.3), _log_spec(6, 0.1)
    quant_meta.set_quant(_value(model, "p"), first)
    quant_meta.set_quant(_value(model, "p2"), second)

    qdq = to_qdq(model)

    assert len(qdq.functions) == 2
    assert [n.op_type for n in qdq.graph].count("QuantizeLogSqrt2") == 2
    p2 = _softmax(first.fake_quantize(_softmax(x).astype(np.float32)))
    expected = second.fake_quantize(p2.astype(np.float32)).astype(np.float64) @ weight
    np.testing.assert_allclose(_run_unoptimized(qdq, {"x": x})["y"], expected, rtol=0, atol=1e-5)


def test_a_log_sqrt2_spec_on_a_constant_is_rejected(weight) -> None:
    model = _matmul_model(np.abs(weight))
    quant_meta.set_quant(_value(model, "w"), _log_spec(4, 1.0))
    with pytest.raises(ValueError, match="constant"):
        to_qdq(model)


def test_a_model_with_only_uniform_specs_gets_no_functions(weight) -> None:
    model = _matmul_model(weight)
    quant_meta.set_quant(_value(model, "x"), QuantSpec(8, False, np.float32(0.1), np.int32(3)))
    qdq = to_qdq(model)
    assert not qdq.functions and "qcompile" not in qdq.opset_imports
