"""Tests of the log√2 ONNX functions (`qcompile.QuantizeLogSqrt2` / `DequantizeLogSqrt2`) run by ONNX Runtime
against the NumPy reference `QuantSpec(kind="log_sqrt2")`: codes bit-exact, values within rtol 1e-6."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile import runtime
from qcompile.ir import quant_meta
from qcompile.ir.quant_meta import QuantSpec
from qcompile.runtime import log_quant
from qcompile.runtime.qdq import to_qdq

RTOL = 1e-6  # dequantized floats; the codes must match exactly
STANDARD_OPS = {
    "Cast",
    "Constant",
    "Div",
    "Greater",
    "Where",
    "Log",
    "Mul",
    "Round",
    "Clip",
    "Ceil",
    "Add",
    "Sub",
    "Neg",
    "Pow",
    "Less",
}


def _log_spec(bits: int, delta: float) -> QuantSpec:
    return QuantSpec(bits, False, np.float32(delta), np.int32(0), None, kind="log_sqrt2")


def _function_model(spec: QuantSpec, opset: int = 14) -> ir.Model:
    """x → QuantizeLogSqrt2 → DequantizeLogSqrt2, with both the codes and the values as graph outputs."""
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["n"]))
    delta = ir.Value(name="delta", const_value=ir.tensor(spec.scale.astype(np.float32), name="delta"))
    qmax = ir.Value(name="qmax", const_value=ir.tensor(np.array(spec.qmax, np.float32), name="qmax"))
    q = ir.node(log_quant.QUANTIZE, [x, delta, qmax], domain=log_quant.DOMAIN, name="q")
    q.outputs[0].name, q.outputs[0].dtype, q.outputs[0].shape = "codes", ir.DataType.UINT8, ir.Shape(["n"])
    dq = ir.node(log_quant.DEQUANTIZE, [q.outputs[0], delta, qmax], domain=log_quant.DOMAIN, name="dq")
    dq.outputs[0].name, dq.outputs[0].dtype, dq.outputs[0].shape = "y", ir.DataType.FLOAT, ir.Shape(["n"])
    graph = ir.Graph(
        [x],
        [q.outputs[0], dq.outputs[0]],
        nodes=[q, dq],
        initializers=[delta, qmax],
        opset_imports={"": opset},
        name="log_sqrt2",
    )
    for value in (delta, qmax):
        value.dtype, value.shape = ir.DataType.FLOAT, ir.Shape([])
    model = ir.Model(graph, ir_version=8)
    log_quant.add_log_functions(model)
    return model


def _softmax_matmul(weight: np.ndarray, opset: int = 14) -> ir.Model:
    graph = helper.make_graph(
        [
            helper.make_node("Softmax", ["x"], ["p"], axis=-1, name="softmax"),
            helper.make_node("MatMul", ["p", "w"], ["y"], name="mm"),
        ],
        "attention_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", weight.shape[1]])],
        [numpy_helper.from_array(weight, "w")],
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def _edge_inputs(delta: float, bits: int) -> np.ndarray:
    rng = np.random.default_rng(bits)
    levels = np.float32(delta) * np.exp2(-np.arange(2**bits) / 2.0)  # exact levels
    boundaries = np.float32(delta) * np.exp2(-(np.arange(2**bits) + 0.5) / 2.0)  # midpoints in the log domain
    near = np.concatenate(
        [
            np.nextafter(boundaries.astype(np.float32), np.float32(0)),
            np.nextafter(boundaries.astype(np.float32), np.float32(1)),
        ]
    )
    special = [
        0.0,
        -0.0,
        -1.0,
        delta,
        2 * delta,
        1e3,
        np.inf,
        -np.inf,
        1e-45,
        1e-38,
        np.float32(delta) * 2.0 ** -(2**bits),
    ]
    return np.concatenate(
        [
            rng.uniform(0, 1, 3000),
            np.exp2(-rng.uniform(0, 2**bits / 2 + 3, 3000)),
            levels,
            near,
            special,
        ]
    ).astype(np.float32)


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("delta", [1.0, 0.29, 2.0**-4])
def test_the_functions_match_the_numpy_reference_on_edge_values(bits: int, delta: float) -> None:
    spec = _log_spec(bits, delta)
    x = _edge_inputs(delta, bits)

    out = runtime.run(runtime.make_session(_function_model(spec), optimize=False), {"x": x})

    assert out["codes"].dtype == np.uint8 and out["y"].dtype == np.float32
    expected_codes = spec.quantize(x)
    np.testing.assert_array_equal(out["codes"].astype(np.int32), expected_codes)
    np.testing.assert_allclose(out["y"], spec.dequantize(expected_codes), rtol=RTOL, atol=0)
    assert set(np.unique(expected_codes)) == set(range(2**bits))  # every code, zero included, was exercised


def test_nan_and_non_positive_inputs_take_the_zero_code_without_nan() -> None:
    spec = _log_spec(4, 0.5)
    x = np.array([np.nan, 0.0, -0.0, -3.0, -np.inf], np.float32)
    out = runtime.run(runtime.make_session(_function_model(spec)), {"x": x})
    np.testing.assert_array_equal(out["codes"], [15] * 5)
    np.testing.assert_array_equal(out["y"], [0.0] * 5)
    np.testing.assert_array_equal(spec.quantize(x), [15] * 5)


@pytest.mark.parametrize("optimize", [False, True], ids=["unoptimized", "ort_optimized"])
@pytest.mark.parametrize("bits", [3, 4, 6, 8])
def test_softmax_matmul_with_a_log_sqrt2_softmax_output_matches_the_reference(bits: int, optimize: bool) -> None:
    rng = np.random.default_rng(10 + bits)
    k, n = 32, 8
    weight = rng.normal(0, 0.5, (k, n)).astype(np.float32)
    logits = rng.normal(0, 4, (256, k)).astype(np.float32)
    logits[rng.random(logits.shape) < 0.05] = -1e4  # exp underflows: exact zeros after Softmax
    model = _softmax_matmul(weight)
    p_float = runtime.run(runtime.make_session(model), {"x": logits})
    delta = float(
        np.quantile(runtime.run(runtime.make_session(runtime.with_outputs(model, ["p"])), {"x": logits})["p"], 0.99)
    )
    spec = _log_spec(bits, delta)
    quant_meta.set_quant(model.graph.node("softmax").outputs[0], spec)

    qdq = to_qdq(model)
    onnx.checker.check_model(ir.to_proto(qdq), full_check=True)
    session = runtime.make_session(runtime.with_outputs(qdq, ["p", "p_quantized", "p_dequantized"]), optimize=optimize)
    out = runtime.run(session, {"x": logits}, ["p", "p_quantized", "p_dequantized", "y"])

    p = out["p"]
    assert (p == 0).sum() > 0 and (p > np.float32(delta)).sum() > 0  # zeros and values above Δ are present
    codes = spec.quantize(p)
    assert out["p_quantized"].dtype == np.uint8
    np.testing.assert_array_equal(out["p_quantized"].astype(np.int32), codes)
    assert codes.min() == 0 and codes.max() == spec.qmax
    np.testing.assert_allclose(out["p_dequantized"], spec.dequantize(codes), rtol=RTOL, atol=0)
    expected_y = spec.fake_quantize(p).astype(np.float64) @ weight.astype(np.float64)
    np.testing.assert_allclose(out["y"], expected_y, rtol=0, atol=1e-5)
    assert np.abs(out["y"] - p_float["y"]).max() > 1e-4  # quantization did change the result


def test_the_function_bodies_use_only_standard_onnx_ops() -> None:
    model = _function_model(_log_spec(4, 1.0))
    assert set(model.functions) == {
        (log_quant.DOMAIN, log_quant.QUANTIZE, ""),
        (log_quant.DOMAIN, log_quant.DEQUANTIZE, ""),
    }
    for function in model.functions.values():
        assert function.opset_imports == {"": 14}
        assert all(node.domain == "" and node.op_type in STANDARD_OPS for node in function)
        assert [v.name for v in function.inputs][1:] == ["delta", "qmax"]
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    assert {(f.domain, f.name) for f in proto.functions} == {
        ("qcompile", "QuantizeLogSqrt2"),
        ("qcompile", "DequantizeLogSqrt2"),
    }
    assert {(o.domain, o.version) for o in proto.opset_import} == {("", 14), ("qcompile", 1)}


def test_add_log_functions_is_idempotent() -> None:
    model = _function_model(_log_spec(4, 1.0))
    functions = dict(model.functions)
    log_quant.add_log_functions(model)
    assert model.functions == functions  # the same Function objects, not replaced
    assert model.opset_imports[log_quant.DOMAIN] == 1


@pytest.mark.parametrize("opset", [13, 17, 21])
def test_the_functions_follow_the_models_default_opset(opset: int) -> None:
    spec = _log_spec(6, 0.5)
    model = _function_model(spec, opset=opset)
    assert all(f.opset_imports == {"": opset} for f in model.functions.values())
    x = np.array([0.0, 0.5, 0.3, 0.01, 2.0], np.float32)
    out = runtime.run(runtime.make_session(model), {"x": x})
    np.testing.assert_array_equal(out["codes"].astype(np.int32), spec.quantize(x))
