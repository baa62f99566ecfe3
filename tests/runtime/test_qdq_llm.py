"""Tests of the decoder-LLM quantizers in `to_qdq`: dynamic per-token activations and per-group weights.

Each is checked against a NumPy reference written here from the algebra (docs/methods/per-token.md), in
float32 op for op as the ONNX graph computes it: codes bit for bit, dequantized values with atol = rtol = 0
without graph optimization (and within 1e-6 of max |x̂| with ONNX Runtime's default optimizations).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile import runtime
from qcompile.ir import quant_meta
from qcompile.ir.quant_meta import QuantSpec
from qcompile.ir.verifier import VerificationError, verify_model
from qcompile.passes.quantize.params import grouped_weight_spec, symmetric_per_channel_spec
from qcompile.runtime.qdq import to_qdq

K, N, G = 256, 24, 128
TINY = np.float32(1e-12)


def ref_token(x: np.ndarray, bits: int, symmetric: bool, ratio: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (last axis) dynamic quantization in float32: (int codes, dequantized values)."""
    x = x.astype(np.float32)
    r = np.float32(ratio)
    if symmetric:
        top = np.float32(2 ** (bits - 1) - 1)
        s = np.maximum((np.abs(x).max(axis=-1, keepdims=True) * r) / top, TINY)
        q = np.clip(np.rint(x / s), -top, top)
        return q.astype(np.int64), (q * s).astype(np.float32)
    levels = np.float32(2**bits - 1)
    lo = np.minimum(x.min(axis=-1, keepdims=True), np.float32(0)) * r
    hi = np.maximum(x.max(axis=-1, keepdims=True), np.float32(0)) * r
    s = np.maximum((hi - lo) / levels, TINY)
    z = np.clip(np.rint(-lo / s), np.float32(0), levels)
    q = np.clip(np.rint(x / s) + z, np.float32(0), levels)
    return q.astype(np.int64), ((q - z) * s).astype(np.float32)


def ref_groups(w: np.ndarray, group: int, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group (axis 0 of W[K, N]) RTN in float64: (codes in [qmin, qmax] offset by z, z repeated, W_hat f32)."""
    k, n = w.shape
    grouped = w.astype(np.float64).reshape(k // group, group, n)
    if symmetric:
        top = 2 ** (bits - 1) - 1
        s = np.maximum(np.abs(grouped).max(axis=1) / top, 1e-12).astype(np.float32)
        z = np.zeros_like(s, dtype=np.int64)
        lo_code, hi_code = -top, top
    else:
        levels = 2**bits - 1
        lo = np.minimum(grouped.min(axis=1), 0.0)
        hi = np.maximum(grouped.max(axis=1), 0.0)
        s64 = np.maximum((hi - lo) / levels, 1e-12)
        z = np.clip(np.rint(-lo / s64), 0, levels).astype(np.int64)
        s = s64.astype(np.float32)
        lo_code, hi_code = 0, levels
    s_full, z_full = np.repeat(s, group, axis=0), np.repeat(z, group, axis=0)
    q = np.clip(np.rint(w.astype(np.float64) / s_full.astype(np.float64)) + z_full, lo_code, hi_code).astype(np.int64)
    return q, z_full, ((q - z_full) * s_full.astype(np.float64)).astype(np.float32)


def _matmul(weight: np.ndarray, opset: int, rank: int = 2) -> ir.Model:
    batch = ["batch", "tokens"][: rank - 1]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [*batch, weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*batch, weight.shape[1]])],
        [numpy_helper.from_array(weight, "w")],
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def _inputs(rank: int = 2) -> np.ndarray:
    """Random rows, one all-zero row, outlier rows (one huge value; one large negative), a constant row."""
    rng = np.random.default_rng(7)
    x = rng.normal(0.3, 1.0, (10, K)).astype(np.float32)
    x[0] = 0.0
    x[1, 5] = 300.0
    x[2] *= 50.0
    x[3, :] = -2.5
    x[4] = np.abs(x[4])  # all positive: the asymmetric zero point is 0
    x[5, 17] = -1e4
    x[6] = rng.uniform(-1, 1, K).astype(np.float32) * 1e-30  # tiny (subnormal-scale) values
    return x if rank == 2 else x.reshape(2, 5, K)


def _run(model: ir.Model, feeds: dict[str, np.ndarray], outputs: list[str], optimize: bool = False) -> dict:
    session = runtime.make_session(runtime.with_outputs(model, outputs), optimize=optimize)
    return runtime.run(session, feeds, ["y", *outputs])


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize(
    "bits, symmetric, ratio", [(8, True, 1.0), (8, False, 1.0), (4, True, 1.0), (4, False, 0.9), (8, True, 0.85)]
)
def test_per_token_codes_and_values_match_numpy_bit_for_bit(opset, rank, bits, symmetric, ratio) -> None:
    weight = np.random.default_rng(0).normal(0, 0.1, (K, N)).astype(np.float32)
    model = _matmul(weight, opset, rank)
    spec = QuantSpec.per_token(bits, symmetric, ratio)
    quant_meta.set_quant(model.graph.inputs[0], spec)
    qdq = to_qdq(model)
    verify_model(qdq)
    x = _inputs(rank)
    out = _run(qdq, {"x": x}, ["x_quantized", "x_dequantized"])
    codes, values = ref_token(x, bits, symmetric, ratio)
    assert out["x_quantized"].dtype == (np.int8 if symmetric else np.uint8)
    np.testing.assert_array_equal(out["x_quantized"].astype(np.int64), codes)
    np.testing.assert_allclose(out["x_dequantized"], values, rtol=0, atol=0)
    assert np.all(np.isfinite(out["x_dequantized"]))
    zero_row = (0, 0) if rank == 3 else (0,)
    assert not np.any(out["x_dequantized"][zero_row])  # the all-zero row stays exactly zero
    # QuantSpec's own NumPy methods are the same reference
    np.testing.assert_array_equal(spec.quantize(x), codes)
    np.testing.assert_allclose(spec.fake_quantize(x), values, rtol=0, atol=0)
    np.testing.assert_allclose(out["y"], values @ weight, rtol=1e-5, atol=1e-5 * float(np.abs(values @ weight).max()))
    # with ONNX Runtime's graph optimizations the values stay within float32 noise
    optimized = _run(qdq, {"x": x}, ["x_dequantized"], optimize=True)
    np.testing.assert_allclose(optimized["x_dequantized"], values, rtol=0, atol=1e-6 * float(np.abs(values).max()))


def test_per_token_codes_span_the_range_and_the_outlier_row_has_its_own_scale() -> None:
    x = _inputs()
    codes, _ = ref_token(x, 8, True)
    assert codes[1, 5] == 127 and codes[2].max() == 127 or codes[2].min() == -127
    spec = QuantSpec.per_token(8, True)
    scale, zero_point = spec.token_params(x)
    assert scale.shape == (10, 1) and not np.any(zero_point)
    assert scale[0, 0] == TINY  # the all-zero row: the guard, no division by zero
    assert scale[1, 0] == np.float32(np.float32(300.0) / np.float32(127))
    _, z = QuantSpec.per_token(8, False).token_params(x)
    assert z[4, 0] == 0 and z[3, 0] == 255  # all positive → 0; all negative → top code


@pytest.mark.parametrize("opset, blocked", [(17, False), (21, False), (17, True), (21, True)])
@pytest.mark.parametrize("bits, symmetric", [(4, True), (4, False), (8, True), (8, False), (3, False)])
@pytest.mark.parametrize("int8_weights", [False, True])
def test_grouped_weights_match_numpy_bit_for_bit(opset, blocked, bits, symmetric, int8_weights) -> None:
    rng = np.random.default_rng(3)
    weight = rng.normal(0, 0.05, (K, N)).astype(np.float32)
    weight[:G, 0] += 0.5  # a group entirely positive
    weight[G:, 1] = 0.0  # a group entirely zero
    weight[10, 2] = 3.0  # an outlier in one group only
    spec = grouped_weight_spec(weight, axis=0, group_size=G, bits=bits, symmetric=symmetric)
    codes, z_full, values = ref_groups(weight, G, bits, symmetric)
    assert spec.scale.shape == (K // G, N) and spec.group_size == G
    np.testing.assert_array_equal(spec.quantize(weight), codes + (0 if not symmetric else 2 ** (bits - 1)))
    np.testing.assert_allclose(spec.fake_quantize(weight), values, rtol=0, atol=0)
    model = _matmul(weight, opset)
    quant_meta.set_quant(model.graph.initializers["w"], spec)
    verify_model(model)
    qdq = to_qdq(model, int8_weights=int8_weights, blocked_weights=blocked)
    verify_model(qdq)
    ops = [node.op_type for node in qdq.graph]
    assert qdq.opset_imports[""] == opset  # never raised for the groups
    if blocked and opset >= 21:
        dq = next(node for node in qdq.graph if node.op_type == "DequantizeLinear")
        assert dq.attributes.get_int("block_size") == G and dq.attributes.get_int("axis") == 0
    else:
        assert ops == ["Cast", "Sub", "Mul", "Reshape", "MatMul"]
    x = _inputs()
    out = _run(qdq, {"x": x}, ["w_dequantized"])
    np.testing.assert_allclose(out["w_dequantized"], values, rtol=0, atol=0)
    stored = qdq.graph.initializers["w_quantized"].const_value.numpy().reshape(K, N).astype(np.int64)
    stored_zero = qdq.graph.initializers["w_zero_point"].const_value.numpy().reshape(K // G, N)
    np.testing.assert_array_equal(stored - np.repeat(stored_zero, G, axis=0).astype(np.int64), codes - z_full)
    assert not np.any(values[G:, 1])  # the all-zero group stays zero
    expected = x @ values
    np.testing.assert_allclose(out["y"], expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))
    if blocked and opset >= 21:  # ORT fuses into MatMulNBits: exact only with a float accuracy level
        options = ort.SessionOptions()
        options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
        proto = ir.serde.serialize_model(qdq).SerializeToString()
        session = ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])
        optimized = {"y": session.run(["y"], {"x": x})[0]}
    else:
        optimized = _run(qdq, {"x": x}, [], optimize=True)
    np.testing.assert_allclose(optimized["y"], expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))


def test_a_gemm_with_trans_b_groups_its_second_axis() -> None:
    weight = np.random.default_rng(4).normal(0, 0.1, (N, K)).astype(np.float32)  # [N, K]
    spec = grouped_weight_spec(weight, axis=1, group_size=G, bits=4, symmetric=False)
    _, _, values = ref_groups(weight.T.copy(), G, 4, False)
    np.testing.assert_allclose(spec.fake_quantize(weight), values.T, rtol=0, atol=0)


def test_per_token_and_group_specs_are_validated() -> None:
    with pytest.raises(ValueError, match="placeholders"):
        QuantSpec(bits=8, signed=True, scale=np.float32(2.0), zero_point=np.int32(0), kind="uniform_token")
    with pytest.raises(ValueError, match="clip_ratio"):
        QuantSpec.per_token(8, True, clip_ratio=1.5)
    with pytest.raises(ValueError, match="clip_ratio applies"):
        QuantSpec(bits=8, signed=True, scale=np.float32(2.0), zero_point=np.int32(0), clip_ratio=0.5)
    with pytest.raises(ValueError, match="depend on x"):
        QuantSpec.per_token(8, True).dequantize(np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="group size must be >= 1"):
        grouped_weight_spec(np.ones((200, 4), np.float32), axis=0, group_size=0, bits=4)
    # a group spec whose scales do not fit the weight is caught by the verifier
    weight = np.ones((K, N), np.float32)
    model = _matmul(weight, 17)
    wrong = grouped_weight_spec(np.ones((2 * K, N), np.float32), axis=0, group_size=G, bits=4)
    quant_meta.set_quant(model.graph.initializers["w"], wrong)
    with pytest.raises(VerificationError, match="per-group quantizer"):
        verify_model(model)


def test_a_per_token_spec_on_a_constant_is_rejected() -> None:
    model = _matmul(np.ones((K, N), np.float32), 17)
    quant_meta.set_quant(model.graph.initializers["w"], QuantSpec.per_token(8))
    with pytest.raises(ValueError, match="per-token"):
        to_qdq(model)


@pytest.mark.parametrize("int8_weights", [False, True])
@pytest.mark.parametrize("bits", [4, 8])
def test_per_channel_weights_run_as_written_when_onnx_runtime_fuses_them(bits, int8_weights) -> None:
    """ONNX Runtime's optimizer turns DequantizeLinear(constant) → MatMul into MatMulNBits, whose default accuracy
    level quantizes the float activations to int8 per block; the sessions qcompile evaluates with compute it in
    float32, so the optimized run equals the QDQ arithmetic up to float rounding."""
    rng = np.random.default_rng(11)
    weight = rng.normal(0, 0.05, (K, N)).astype(np.float32)
    spec = symmetric_per_channel_spec(weight, axis=1, bits=bits, unsigned_container=True)
    model = _matmul(weight, 17)
    quant_meta.set_quant(model.graph.initializers["w"], spec)
    qdq = to_qdq(model, int8_weights=int8_weights)
    assert "DequantizeLinear" in [node.op_type for node in qdq.graph]
    x = rng.normal(0, 1, (10, K)).astype(np.float32)
    expected = x @ spec.fake_quantize(weight)
    optimized = _run(qdq, {"x": x}, [], optimize=True)
    np.testing.assert_allclose(optimized["y"], expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))
