"""The QDQ export's int8-weight form (`int8_weights`): the same numbers as the uint8 form, the fused integer
kernels ONNX Runtime runs for it, and the per-CPU choice between the two (docs/qdq-export.md)."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompile
from qcompile import runtime
from qcompile.backends.onnx import export
from qcompile.backends.onnx.kernels import cpu_flags, int8_weights_exact
from qcompile.ir import quant_meta
from qcompile.ir.quant_meta import QuantSpec
from qcompile.passes.quantize.params import asymmetric_spec, symmetric_per_channel_spec
from qcompile.runtime.qdq import int8_weight_codes, to_qdq

export_module = importlib.import_module("qcompile.backends.onnx.export")

AVX2 = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx fma avx2 bmi2"
AVX512 = AVX2 + " avx512f avx512dq avx512cd avx512bw avx512vl"
EXACT_HERE = int8_weights_exact()


def _quantized(tiny, recipe: str):
    context = qcompile.PipelineContext(calibration=tiny.calibration, progress=False)
    qcompile.run_passes(tiny.model, recipe, context=context, check_numerics=False)
    return tiny


def _outputs(model: ir.Model, feeds: dict, optimize: bool) -> np.ndarray:
    return runtime.run(runtime.make_session(model, optimize=optimize), feeds)["y"]


def _matmul_model() -> ir.Model:
    """y = ((x·W)·z) ⊙ (x·x): x and z activations, W a weight.

    (⊙ rather than + : ONNX Runtime would fuse MatMul + Add into a float Gemm before its QDQ fusions.)"""
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.3, (16, 16)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"], name="linear"),
        helper.make_node("MatMul", ["xw", "z"], ["xwz"], name="act_act"),
        helper.make_node("MatMul", ["x", "x"], ["xx"], name="square"),
        helper.make_node("Mul", ["xwz", "xx"], ["y"], name="mul"),
    ]
    graph = helper.make_graph(
        nodes,
        "mm",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 16]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [16, 16]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 16])],
        [numpy_helper.from_array(weight, "w")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 9
    model = ir.serde.deserialize_model(proto)
    values = {v.name: v for v in model.graph.inputs}
    values.update(model.graph.initializers)
    values.update({o.name: o for n in model.graph for o in n.outputs})
    quant_meta.set_quant(values["w"], symmetric_per_channel_spec(weight, 1, 8, unsigned_container=True))
    for name, (lo, hi) in {"x": (-2.0, 3.0), "z": (-1.5, 1.0), "xw": (-4.0, 5.0)}.items():
        quant_meta.set_quant(values[name], asymmetric_spec(lo, hi, 8))
    return model


def _feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"x": rng.normal(0, 1.2, (16, 16)).astype(np.float32), "z": rng.normal(0, 0.7, (16, 16)).astype(np.float32)}


def _initializer_types(model: ir.Model) -> dict[str, ir.DataType]:
    return {name: value.dtype for name, value in model.graph.initializers.items()}


# --- exactness -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["w8a8", "w6a6", "w4a4"])
def test_the_int8_form_computes_exactly_what_the_uint8_form_does(tiny, recipe: str) -> None:
    quantized = _quantized(tiny, recipe)
    before = to_qdq(quantized.model, int8_weights=False)
    after = to_qdq(quantized.model, int8_weights=True)
    # The QDQ graphs as written (no fusion): bit for bit the same outputs.
    np.testing.assert_array_equal(
        _outputs(after, quantized.feeds, optimize=False), _outputs(before, quantized.feeds, optimize=False)
    )


@pytest.mark.skipif(not EXACT_HERE, reason="u8×s8 kernels saturate on this CPU (no VNNI/AMX)")
@pytest.mark.parametrize("recipe", ["w8a8", "w4a4"])
def test_fused_int8_kernels_match_the_uint8_form_on_a_vnni_cpu(tiny, recipe: str) -> None:
    quantized = _quantized(tiny, recipe)
    before = _outputs(to_qdq(quantized.model, int8_weights=False), quantized.feeds, optimize=True)
    after = _outputs(to_qdq(quantized.model, int8_weights=True), quantized.feeds, optimize=True)
    # Integer sums are exact in both kernels; only the float rescaling order may differ (~1 ulp of |y| ≤ 30).
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-5)


def test_int8_weight_codes_are_the_uint8_codes_minus_the_zero_point() -> None:
    model = _matmul_model()
    before, after = to_qdq(model, int8_weights=False), to_qdq(model, int8_weights=True)
    old = before.graph.initializers["w_quantized"].const_value.numpy()
    new = after.graph.initializers["w_quantized"].const_value.numpy()
    assert old.dtype == np.uint8 and new.dtype == np.int8
    np.testing.assert_array_equal(new.astype(np.int16), old.astype(np.int16) - 128)
    np.testing.assert_array_equal(after.graph.initializers["w_zero_point"].const_value.numpy(), np.zeros(16, np.int8))
    np.testing.assert_array_equal(_outputs(after, _feeds(), optimize=False), _outputs(before, _feeds(), optimize=False))


@pytest.mark.parametrize("bits", [8, 6, 4, 2])
def test_symmetric_weights_of_any_width_become_centered_int8_codes(bits: int) -> None:
    weight = np.random.default_rng(bits).normal(0, 1, (24, 5)).astype(np.float32)
    spec = symmetric_per_channel_spec(weight, 1, bits, unsigned_container=True)
    codes, zero_point = int8_weight_codes(spec, spec.quantize(weight))
    assert codes.dtype == zero_point.dtype == np.int8 and not zero_point.any()
    assert np.abs(codes).max() == 2 ** (bits - 1) - 1
    np.testing.assert_array_equal(codes * spec.scale, spec.fake_quantize(weight))


def test_asymmetric_weights_that_do_not_center_into_int8_are_shifted_by_128() -> None:
    spec = QuantSpec(
        bits=8, signed=False, scale=np.array([0.5, 0.25], np.float32), zero_point=np.array([3, 250]), axis=0
    )
    codes = np.array([[0, 255, 3], [0, 255, 250]])
    int8_codes, zero_point = int8_weight_codes(spec, codes)
    np.testing.assert_array_equal(int8_codes, codes - 128)
    np.testing.assert_array_equal(zero_point, np.array([3 - 128, 250 - 128], np.int8))
    dequantized = (int8_codes.astype(np.int32) - zero_point[:, None].astype(np.int32)) * spec.scale[:, None]
    np.testing.assert_array_equal(dequantized, spec.dequantize(codes))


# --- which values become int8 --------------------------------------------------------------------------------


def test_weights_become_int8_and_activations_stay_uint8() -> None:
    types = _initializer_types(to_qdq(_matmul_model(), int8_weights=True))
    assert types["w_quantized"] == types["w_zero_point"] == ir.DataType.INT8
    assert {types[f"{name}_zero_point"] for name in ("x", "z", "xw")} == {ir.DataType.UINT8}


def test_the_uint8_form_is_what_to_qdq_writes_by_default() -> None:
    types = _initializer_types(to_qdq(_matmul_model()))
    assert types == _initializer_types(to_qdq(_matmul_model(), int8_weights=False))
    assert {types[n] for n in ("w_quantized", "w_zero_point", "z_zero_point", "x_zero_point")} == {ir.DataType.UINT8}


# --- the fused kernels ORT runs ------------------------------------------------------------------------------


def _optimized(model: ir.Model, tmp_path: Path) -> onnx.ModelProto:
    options = runtime.session_options(threads=1, optimize=True)
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(runtime.session_source(model).proto, options, providers=["CPUExecutionProvider"])
    return onnx.load(str(tmp_path / "optimized.onnx"))


# op: input indices of (B, A's zero point, B's zero point)
INTEGER_MATMULS = {"MatMulIntegerToFloat": (1, 4, 5), "QLinearMatMul": (3, 2, 5)}


@pytest.mark.parametrize("signed", [False, True])
def test_ort_fuses_both_forms_into_integer_matmuls(signed: bool, tmp_path: Path) -> None:
    optimized = _optimized(to_qdq(_matmul_model(), int8_weights=signed), tmp_path)
    inits = {i.name: i.data_type for i in optimized.graph.initializer}
    fused = {n.name: n for n in optimized.graph.node if n.op_type in INTEGER_MATMULS}
    assert set(fused) == {"linear", "act_act", "square"}
    assert not [n.name for n in optimized.graph.node if n.op_type in ("MatMul", "Gemm", "FusedMatMul")]
    weight_type = TensorProto.INT8 if signed else TensorProto.UINT8

    def operand(name: str, index: int) -> str:
        return fused[name].input[INTEGER_MATMULS[fused[name].op_type][index]]

    assert inits[operand("linear", 0)] == inits[operand("linear", 2)] == weight_type  # codes go into the kernel
    activation_zero_points = [operand(n, 1) for n in fused] + [operand(n, 2) for n in ("act_act", "square")]
    assert {inits[name] for name in activation_zero_points} == {TensorProto.UINT8}


# --- the per-CPU choice --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "exact"),
    [
        (AVX2, False),  # vpmaddubsw saturates int16 pair sums
        (AVX512, False),  # AVX-512 BW without VNNI: the same
        (AVX512 + " avx512_vnni", True),
        (AVX2 + " avx_vnni", True),
        (AVX512 + " avx512_vnni amx_tile amx_int8", True),
        ("", False),
    ],
)
def test_signed_kernels_are_chosen_only_where_they_are_exact(flags: str, exact: bool) -> None:
    assert int8_weights_exact(flags.split()) is exact


def test_cpu_flags_reads_the_first_processor(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {AVX2} avx512_vnni\n\nprocessor\t: 1\nflags\t\t: {AVX2}\n")
    assert "avx512_vnni" in cpu_flags(info) and "avx2" in cpu_flags(info)
    assert cpu_flags(tmp_path / "missing") == frozenset()
    assert int8_weights_exact(cpu_flags(tmp_path / "missing")) is False


@pytest.mark.parametrize("exact", [False, True])
def test_export_picks_the_form_for_this_cpu_unless_told(exact: bool, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(export_module, "int8_weights_exact", lambda: exact)
    model = _matmul_model()
    chosen = onnx.load(str(export(model, tmp_path / "auto.onnx")))
    forced = onnx.load(str(export(model, tmp_path / "forced.onnx", int8_weights=not exact)))

    def weight_type(proto: onnx.ModelProto) -> int:
        return next(i.data_type for i in proto.graph.initializer if i.name == "w_quantized")

    assert weight_type(chosen) == (TensorProto.INT8 if exact else TensorProto.UINT8)
    assert weight_type(forced) == (TensorProto.UINT8 if exact else TensorProto.INT8)
