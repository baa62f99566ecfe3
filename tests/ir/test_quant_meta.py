"""Tests of `QuantSpec` (quantize/dequantize arithmetic, validation) and the value-metadata accessors."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from qcompile.ir import quant_meta
from qcompile.ir.quant_meta import QuantSpec, TensorRange


def reference_codes(x: np.ndarray, scale, zero_point, bits: int, signed: bool, axis: int | None) -> np.ndarray:
    """q = clip(round_half_even(x / s) + z, qmin, qmax), written out from the spec, in float64."""
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    scale = np.asarray(scale, dtype=np.float64)
    zero_point = np.asarray(zero_point, dtype=np.float64)
    if axis is not None:
        shape = [1] * x.ndim
        shape[axis] = scale.size
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return np.clip(np.round(x.astype(np.float64) / scale) + zero_point, qmin, qmax).astype(np.int64)


def reference_dequant(codes: np.ndarray, scale, zero_point, axis: int | None) -> np.ndarray:
    scale = np.asarray(scale, dtype=np.float64)
    zero_point = np.asarray(zero_point, dtype=np.float64)
    if axis is not None:
        shape = [1] * codes.ndim
        shape[axis] = scale.size
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return (codes - zero_point) * scale


@pytest.mark.parametrize(("bits", "signed"), [(8, False), (8, True), (6, False), (4, True), (2, False), (2, True)])
def test_per_tensor_codes_and_values_match_the_affine_formula(bits: int, signed: bool) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, (20, 10)).astype(np.float32)
    zero_point = -1 if signed else 2 ** (bits - 1) - 1
    scale = np.float32(6.0 / (2**bits - 1))  # a grid about [-3, 3]: N(0, 3) data saturates at both ends
    spec = QuantSpec(bits=bits, signed=signed, scale=scale, zero_point=np.int32(zero_point))

    codes = spec.quantize(x)
    expected = reference_codes(x, scale, zero_point, bits, signed, None)

    np.testing.assert_array_equal(codes, expected)
    assert codes.dtype == np.int32
    assert codes.min() == spec.qmin and codes.max() == spec.qmax  # the data saturates at both ends
    values = spec.dequantize(codes)
    assert values.dtype == np.float32
    np.testing.assert_allclose(values, reference_dequant(expected, scale, zero_point, None), rtol=1e-7, atol=0)
    np.testing.assert_array_equal(spec.fake_quantize(x), values)


@pytest.mark.parametrize(
    ("bits", "signed", "qmin", "qmax"),
    [(8, True, -128, 127), (8, False, 0, 255), (4, True, -8, 7), (4, False, 0, 15), (2, True, -2, 1)],
)
def test_code_limits_are_the_b_bit_limits(bits: int, signed: bool, qmin: int, qmax: int) -> None:
    spec = QuantSpec(bits=bits, signed=signed, scale=np.float32(1.0), zero_point=np.int32(0))
    assert (spec.qmin, spec.qmax) == (qmin, qmax)
    assert spec.container_is_full == (bits == 8)


def test_rounding_is_half_to_even_as_onnx_quantize_linear_does() -> None:
    spec = QuantSpec(bits=8, signed=True, scale=np.float32(0.5), zero_point=np.int32(0))
    x = np.array([1.25, 1.75, -1.25, -1.75, 0.25, 0.75], dtype=np.float32)  # x / s = ±2.5, ±3.5, 0.5, 1.5
    np.testing.assert_array_equal(spec.quantize(x), [2, 4, -2, -4, 0, 2])

    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"])
    graph = helper.make_graph(
        [node],
        "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6])],
        [helper.make_tensor_value_info("q", TensorProto.INT8, [6])],
        [
            onnx.numpy_helper.from_array(np.array(0.5, np.float32), "s"),
            onnx.numpy_helper.from_array(np.array(0, np.int8), "z"),
        ],
    )
    onnx_codes = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])).run(
        None, {"x": x}
    )[0]
    np.testing.assert_array_equal(spec.quantize(x), onnx_codes)


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_per_channel_scales_broadcast_along_the_axis(axis: int) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0, 2, (3, 4, 5)).astype(np.float32)
    channels = x.shape[axis]
    scale = rng.uniform(0.01, 0.1, channels).astype(np.float32)
    zero_point = rng.integers(-5, 6, channels).astype(np.int32)
    spec = QuantSpec(bits=8, signed=True, scale=scale, zero_point=zero_point, axis=axis)

    codes = spec.quantize(x)

    np.testing.assert_array_equal(codes, reference_codes(x, scale, zero_point, 8, True, axis))
    np.testing.assert_allclose(
        spec.dequantize(codes), reference_dequant(codes, scale, zero_point, axis), rtol=1e-7, atol=0
    )
    # Each slice along the axis uses its own scale: quantizing the slice per tensor gives the same codes.
    for c in range(channels):
        per_tensor = QuantSpec(bits=8, signed=True, scale=scale[c], zero_point=zero_point[c])
        np.testing.assert_array_equal(np.take(codes, c, axis=axis), per_tensor.quantize(np.take(x, c, axis=axis)))


def test_per_channel_quantize_matches_onnx_quantize_linear_with_axis() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (6, 4)).astype(np.float32)
    scale = np.array([0.01, 0.02, 0.005, 0.03], np.float32)
    zero_point = np.array([0, 10, 250, 128], np.uint8)
    spec = QuantSpec(bits=8, signed=False, scale=scale, zero_point=zero_point.astype(np.int32), axis=1)
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1)],
        "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 4])],
        [helper.make_tensor_value_info("q", TensorProto.UINT8, [6, 4])],
        [onnx.numpy_helper.from_array(scale, "s"), onnx.numpy_helper.from_array(zero_point, "z")],
    )
    onnx_codes = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])).run(
        None, {"x": x}
    )[0]
    np.testing.assert_array_equal(spec.quantize(x), onnx_codes.astype(np.int32))


@pytest.mark.parametrize("scale", [0.0, -0.1, np.inf, np.nan])
def test_non_positive_or_non_finite_scale_is_rejected(scale: float) -> None:
    with pytest.raises(ValueError, match="finite and positive"):
        QuantSpec(bits=8, signed=True, scale=np.float32(scale), zero_point=np.int32(0))


def test_one_bad_channel_scale_is_rejected() -> None:
    with pytest.raises(ValueError, match="finite and positive"):
        QuantSpec(bits=8, signed=True, scale=np.array([0.1, 0.0, 0.2]), zero_point=np.zeros(3, np.int32), axis=0)


@pytest.mark.parametrize(
    ("bits", "signed", "zero_point"),
    [(8, True, 128), (8, True, -129), (8, False, -1), (8, False, 256), (4, False, 16), (4, True, -9)],
)
def test_zero_point_outside_the_code_range_is_rejected(bits: int, signed: bool, zero_point: int) -> None:
    with pytest.raises(ValueError, match="zero point outside"):
        QuantSpec(bits=bits, signed=signed, scale=np.float32(0.1), zero_point=np.int32(zero_point))


@pytest.mark.parametrize(
    ("bits", "signed", "zero_point"), [(8, True, 127), (8, True, -128), (8, False, 255), (4, False, 15), (4, True, -8)]
)
def test_zero_point_at_the_code_limits_is_accepted(bits: int, signed: bool, zero_point: int) -> None:
    spec = QuantSpec(bits=bits, signed=signed, scale=np.float32(0.1), zero_point=np.int32(zero_point))
    assert int(spec.zero_point) == zero_point


@pytest.mark.parametrize("bits", [0, 1, 9, 16])
def test_bits_outside_2_to_8_are_rejected(bits: int) -> None:
    with pytest.raises(ValueError, match="2..8"):
        QuantSpec(bits=bits, signed=False, scale=np.float32(0.1), zero_point=np.int32(0))


def test_per_channel_scales_without_an_axis_are_rejected() -> None:
    with pytest.raises(ValueError, match="axis"):
        QuantSpec(bits=8, signed=True, scale=np.ones(3, np.float32), zero_point=np.zeros(3, np.int32))


def test_an_axis_with_a_scalar_scale_is_rejected() -> None:
    with pytest.raises(ValueError, match="axis"):
        QuantSpec(bits=8, signed=True, scale=np.float32(1.0), zero_point=np.int32(0), axis=0)


def test_scale_and_zero_point_of_different_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        QuantSpec(bits=8, signed=True, scale=np.ones(3, np.float32), zero_point=np.zeros(4, np.int32), axis=0)


def test_scale_and_zero_point_are_stored_as_float32_and_int32() -> None:
    spec = QuantSpec(bits=8, signed=False, scale=[0.5, 0.25], zero_point=[1, 2], axis=0)
    assert spec.scale.dtype == np.float32 and spec.zero_point.dtype == np.int32
    np.testing.assert_array_equal(spec.scale, [0.5, 0.25])


def test_tensor_range_rejects_lo_above_hi() -> None:
    with pytest.raises(ValueError, match="lo="):
        TensorRange(lo=1.0, hi=0.0, raw_min=0.0, raw_max=1.0, observer="minmax", samples=1)


def test_accessors_attach_read_and_remove_facts_on_values() -> None:
    value = ir.Value(name="v")
    spec = QuantSpec(bits=8, signed=False, scale=np.float32(0.1), zero_point=np.int32(3))
    tensor_range = TensorRange(lo=-1.0, hi=2.0, raw_min=-1.0, raw_max=2.0, observer="minmax", samples=4)
    assert quant_meta.get_quant(value) is None and quant_meta.get_range(value) is None

    quant_meta.set_quant(value, spec)
    quant_meta.set_range(value, tensor_range)
    assert quant_meta.get_quant(value) is spec and quant_meta.get_range(value) is tensor_range

    quant_meta.clear_quant(value)
    quant_meta.set_range(value, None)
    assert quant_meta.get_quant(value) is None and quant_meta.get_range(value) is None
    quant_meta.clear_quant(value)  # clearing twice is harmless


def test_quantized_values_lists_inputs_initializers_and_node_outputs_once(tiny) -> None:
    graph = tiny.model.graph
    spec = QuantSpec(bits=8, signed=False, scale=np.float32(0.1), zero_point=np.int32(0))
    chosen = [graph.inputs[0], graph.initializers["fc1.weight"], graph.node("attn/Softmax").outputs[0]]
    for value in chosen:
        quant_meta.set_quant(value, spec)

    found = quant_meta.quantized_values(graph)

    assert sorted(v.name for v in found) == sorted(v.name for v in chosen)


def test_a_spec_with_matrix_scales_is_rejected():
    with pytest.raises(ValueError, match="scalar or a vector"):
        QuantSpec(bits=8, signed=True, scale=np.ones((2, 2), np.float32), zero_point=np.zeros((2, 2), np.int32), axis=0)


# --- log√2 quantizer (RepQ-ViT, post-Softmax) -------------------------------------------------------


def _log_spec(bits: int = 4, delta: float = 1.0) -> QuantSpec:
    return QuantSpec(bits, False, np.float32(delta), np.int32(0), None, kind="log_sqrt2")


def test_uniform_is_the_default_kind_and_positional_construction_is_unchanged() -> None:
    spec = QuantSpec(8, False, np.float32(0.1), np.int32(3), None)
    assert spec.kind == "uniform"
    np.testing.assert_array_equal(spec.quantize(np.array([0.0, 0.1, 100.0])), [3, 4, 255])


def test_log_sqrt2_codes_and_values_on_hand_checked_points() -> None:
    spec = _log_spec(bits=4, delta=1.0)
    cases = [  # x, code, x̂
        (1.0, 0, 1.0),
        (0.5, 2, 0.5),
        (2**-0.5, 1, np.sqrt(0.5)),
        (0.0, 15, 0.0),  # zero takes the reserved top code
        (2**-7.5, 15, 0.0),  # unclamped −2·log2 x = 15 ≥ 2^b − 1: flushed to zero (the documented deviation)
        (2**-7, 14, 2**-7),  # the smallest nonzero level
        (2**-6.5, 13, 2**-6.5),
        (0.3, 3, 2**-1.5),  # −2·log2 0.3 = 3.47
        (3.0, 0, 1.0),  # above Δ: q = 0, x̂ = Δ
        (-0.25, 15, 0.0),  # negative inputs are zero as well
    ]
    x = np.array([c[0] for c in cases], dtype=np.float32)
    codes = spec.quantize(x)
    values = spec.dequantize(codes)
    assert codes.dtype == np.int32 and values.dtype == np.float32
    np.testing.assert_array_equal(codes, [c[1] for c in cases])
    np.testing.assert_allclose(values, [c[2] for c in cases], rtol=1e-7, atol=0)
    np.testing.assert_array_equal(spec.fake_quantize(x), values)
    assert spec.dequantize(np.array([0]))[0] == 1.0 and spec.dequantize(np.array([15]))[0] == 0.0


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("delta", [1.0, 0.37, 2.0**-5])
def test_log_sqrt2_levels_are_delta_times_powers_of_root_half_and_the_top_code_is_zero(bits: int, delta: float) -> None:
    spec = _log_spec(bits, delta)
    q = np.arange(2**bits)
    values = spec.dequantize(q)
    expected = np.float64(np.float32(delta)) * np.exp2(-q / 2.0)
    expected[-1] = 0.0
    # Compared after the float32 cast (the deepest 8-bit levels are float32 subnormals).
    np.testing.assert_allclose(values, expected.astype(np.float32), rtol=1e-7, atol=0)
    # Every nonzero level is its own code (quantize ∘ dequantize is the identity below the zero code).
    np.testing.assert_array_equal(spec.quantize(values), q)


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_log_sqrt2_codes_are_the_nearest_level_in_the_log_domain(bits: int) -> None:
    rng = np.random.default_rng(3)
    delta = 0.6
    x = np.concatenate([rng.uniform(0, 1, 2000), np.exp2(-rng.uniform(0, 2**bits / 2 + 2, 2000)), [0.0, 1.0, 5.0]])
    spec = _log_spec(bits, delta)
    codes = spec.quantize(x)
    qmax = 2**bits - 1
    with np.errstate(divide="ignore"):
        unclamped = np.round(-2 * np.log2(x / np.float64(np.float32(delta))))  # brief's formula, written out
    expected = np.where(unclamped >= qmax, qmax, np.maximum(unclamped, 0))
    np.testing.assert_array_equal(codes, expected)
    assert codes.min() == 0 and codes.max() == qmax


def test_log_sqrt2_quantize_accepts_float64_input() -> None:
    spec = _log_spec(4, 0.5)
    x = np.array([0.5, 0.25, 0.0, 1.0], dtype=np.float64)
    np.testing.assert_array_equal(spec.quantize(x), [0, 2, 15, 0])
    np.testing.assert_array_equal(spec.fake_quantize(x), np.array([0.5, 0.25, 0.0, 0.5], np.float32))


def test_log_sqrt2_spec_must_be_unsigned() -> None:
    with pytest.raises(ValueError, match="unsigned"):
        QuantSpec(4, True, np.float32(1.0), np.int32(0), None, kind="log_sqrt2")


def test_log_sqrt2_spec_must_be_per_tensor() -> None:
    with pytest.raises(ValueError, match="per tensor"):
        QuantSpec(4, False, np.ones(3, np.float32), np.zeros(3, np.int32), 0, kind="log_sqrt2")


def test_log_sqrt2_spec_must_have_a_zero_zero_point() -> None:
    with pytest.raises(ValueError, match="zero_point 0"):
        QuantSpec(4, False, np.float32(1.0), np.int32(2), None, kind="log_sqrt2")


@pytest.mark.parametrize("delta", [0.0, -1.0, np.inf])
def test_log_sqrt2_spec_needs_a_positive_finite_delta(delta: float) -> None:
    with pytest.raises(ValueError, match="finite and positive"):
        QuantSpec(4, False, np.float32(delta), np.int32(0), None, kind="log_sqrt2")


def test_an_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="kind"):
        QuantSpec(8, False, np.float32(1.0), np.int32(0), None, kind="log2")
