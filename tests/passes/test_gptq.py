"""Tests of GPTQ rounding (passes/quantize/gptq.py) and `quantize:weight_search=gptq`.

References are computed independently here: round-to-nearest on the same grid, and for tiny problems
the exhaustive best codes under the layer loss tr(ΔᵀHΔ).
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompile
from qcompile import PipelineContext
from qcompile.errors import InputError
from qcompile.ir import quant_meta
from qcompile.passes.quantize.gptq import gptq_codes, layer_loss
from qcompile.runtime.qdq import to_qdq


def _nearest(weight: np.ndarray, step: np.ndarray, bits: int) -> np.ndarray:
    top = 2 ** (bits - 1) - 1
    return np.clip(np.rint(weight / step), -top, top)


def _correlated_problem(k: int, n: int, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, k)) @ (np.eye(k) + 0.9 * rng.normal(size=(k, k)) / np.sqrt(k))
    weight = rng.normal(size=(k, n)) * 0.1
    return x, weight, x.T @ x


def test_with_an_identity_hessian_gptq_is_round_to_nearest() -> None:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(48, 16))
    step = np.abs(weight).max(axis=0) / 7
    np.testing.assert_array_equal(gptq_codes(weight, np.eye(48), step, bits=4), _nearest(weight, step, 4))


def test_a_diagonal_hessian_with_act_order_still_gives_round_to_nearest_in_the_original_layout() -> None:
    # act_order permutes inputs by H_kk; with no correlations nothing propagates, so the codes must come
    # back un-permuted and equal to round-to-nearest.
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(40, 8))
    step = np.abs(weight).max(axis=0) / 31
    hessian = np.diag(rng.uniform(0.1, 10.0, size=40))
    np.testing.assert_array_equal(gptq_codes(weight, hessian, step, bits=6, act_order=True), _nearest(weight, step, 6))


@pytest.mark.parametrize("bits", [3, 4, 6])
def test_gptq_lowers_the_layer_loss_of_correlated_inputs(bits: int) -> None:
    x, weight, hessian = _correlated_problem(k=96, n=32, rows=2000, seed=bits)
    step = np.abs(weight).max(axis=0) / (2 ** (bits - 1) - 1)
    codes = gptq_codes(weight, hessian, step, bits)
    nearest = _nearest(weight, step, bits)
    top = 2 ** (bits - 1) - 1
    assert codes.min() >= -top and codes.max() <= top and np.array_equal(codes, np.rint(codes))
    gptq_error = np.sum((x @ weight - x @ (codes * step)) ** 2)
    nearest_error = np.sum((x @ weight - x @ (nearest * step)) ** 2)
    assert gptq_error < 0.8 * nearest_error
    assert layer_loss(weight, codes * step, hessian) == pytest.approx(gptq_error, rel=1e-9)


def test_gptq_lies_between_the_exhaustive_optimum_and_round_to_nearest() -> None:
    x, weight, hessian = _correlated_problem(k=5, n=1, rows=200, seed=7)
    bits, step = 3, np.abs(weight).max(axis=0) / 3
    losses = [
        layer_loss(weight, np.array(c, float)[:, None] * step, hessian)
        for c in itertools.product(range(-3, 4), repeat=5)
    ]
    gptq = layer_loss(weight, gptq_codes(weight, hessian, step, bits) * step, hessian)
    nearest = layer_loss(weight, _nearest(weight, step, bits) * step, hessian)
    assert min(losses) <= gptq + 1e-12 and gptq <= nearest


@pytest.mark.parametrize("block", [1, 7, 128])
def test_lazy_block_updates_do_not_change_the_codes(block: int) -> None:
    _, weight, hessian = _correlated_problem(k=64, n=16, rows=500, seed=3)
    step = np.abs(weight).max(axis=0) / 7
    np.testing.assert_array_equal(
        gptq_codes(weight, hessian, step, 4, block=block), gptq_codes(weight, hessian, step, 4, block=64)
    )


def test_dead_inputs_get_zero_codes_and_no_nans() -> None:
    x, weight, _ = _correlated_problem(k=12, n=4, rows=100, seed=2)
    x[:, 5] = 0.0
    codes = gptq_codes(weight, x.T @ x, np.abs(weight).max(axis=0) / 7, 4)
    assert np.all(np.isfinite(codes)) and np.all(codes[5] == 0)


def test_mismatched_hessian_is_rejected() -> None:
    with pytest.raises(ValueError, match="does not match"):
        gptq_codes(np.ones((4, 2)), np.eye(5), np.ones(2), 4)


# --- the pass -------------------------------------------------------------------------------------------


def _two_linear_model(w1: np.ndarray, w2: np.ndarray, trans_b: bool) -> ir.Model:
    """y = Gemm(MatMul(x, W1), W2) — the second linear in Gemm form, optionally with transB."""
    k, h = w1.shape
    n = w2.shape[1]
    second = w2.T.copy() if trans_b else w2
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node("Gemm", ["h", "w2"], ["y"], name="fc2", transB=int(trans_b)),
        ],
        "two_linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
        [
            numpy_helper.from_array(w1.astype(np.float32), "w1"),
            numpy_helper.from_array(second.astype(np.float32), "w2"),
        ],
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    proto = ir.serde.serialize_model(model).SerializeToString()
    return ort.InferenceSession(proto, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _data(k: int, seed: int) -> tuple[qcompile.CalibrationData, np.ndarray]:
    rng = np.random.default_rng(seed)
    mix = np.eye(k) + 0.9 * rng.normal(size=(k, k)) / np.sqrt(k)
    batches = [{"x": (rng.normal(size=(64, k)) @ mix).astype(np.float32)} for _ in range(4)]
    held_out = (rng.normal(size=(256, k)) @ mix).astype(np.float32)
    return qcompile.CalibrationData.from_list(batches), held_out


def _quantize(model: ir.Model, data: qcompile.CalibrationData, search: str) -> list[dict]:
    passes = f"calibrate:bits=8,quantize:weight_bits=3:act_bits=8:weight_search={search}"
    return qcompile.run_passes(model, passes, context=PipelineContext(calibration=data, progress=False))


@pytest.mark.parametrize("trans_b", [False, True])
def test_weight_search_gptq_beats_mse_on_held_out_inputs_and_exports_its_codes(trans_b: bool) -> None:
    rng = np.random.default_rng(11)
    w1, w2 = rng.normal(size=(32, 48)) * 0.2, rng.normal(size=(48, 8)) * 0.2
    data, held_out = _data(32, seed=12)
    reference = _run(_two_linear_model(w1, w2, trans_b), held_out)
    errors = {}
    for search in ("mse", "gptq"):
        model = _two_linear_model(w1, w2, trans_b)
        records = _quantize(model, data, search)
        exported = to_qdq(model)
        errors[search] = float(np.mean((_run(exported, held_out) - reference) ** 2))
        if search == "gptq":
            stats = records[-1]["stats"]["gptq"]
            assert stats["linears"] == 2 and stats["skipped"] == {} and stats["loss_vs_nearest"]["max"] < 1.0
            for name in ("w1", "w2"):
                # the initializer holds Ŵ on the grid: the export's codes dequantize back to it exactly
                value = model.graph.initializers[name]
                spec = quant_meta.get_quant(value)
                np.testing.assert_array_equal(
                    spec.dequantize(spec.quantize(value.const_value.numpy())), value.const_value.numpy()
                )
    assert errors["gptq"] < 0.8 * errors["mse"]


def test_gptq_keeps_the_mse_grid() -> None:
    rng = np.random.default_rng(4)
    w1, w2 = rng.normal(size=(16, 24)), rng.normal(size=(24, 4))
    data, _ = _data(16, seed=5)
    scales = {}
    for search in ("mse", "gptq"):
        model = _two_linear_model(w1, w2, False)
        _quantize(model, data, search)
        scales[search] = quant_meta.get_quant(model.graph.initializers["w1"]).scale
    np.testing.assert_array_equal(scales["gptq"], scales["mse"])


def test_a_shared_weight_keeps_round_to_nearest_and_is_reported() -> None:
    rng = np.random.default_rng(6)
    w = rng.normal(size=(8, 8)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="a"),
            helper.make_node("MatMul", ["h", "w"], ["y"], name="b"),
        ],
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [numpy_helper.from_array(w, "w")],
    )
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    data, _ = _data(8, seed=1)
    records = _quantize(model, data, "gptq")
    stats = records[-1]["stats"]["gptq"]
    assert stats["linears"] == 0 and set(stats["skipped"].values()) == {"weight shared by several nodes"}
    np.testing.assert_array_equal(model.graph.initializers["w"].const_value.numpy(), w)


def test_gptq_without_calibration_data_is_a_clear_error() -> None:
    rng = np.random.default_rng(0)
    model = _two_linear_model(rng.normal(size=(4, 4)), rng.normal(size=(4, 2)), False)
    data, _ = _data(4, seed=0)
    qcompile.run_passes(model, "calibrate", context=PipelineContext(calibration=data, progress=False))
    with pytest.raises(InputError, match="weight_search=gptq needs calibration data"):
        qcompile.run_passes(model, "quantize:weight_search=gptq", context=PipelineContext(progress=False))
