"""log-softmax (RepQ-ViT's log√2 quantizer on post-Softmax activations): the spec it attaches and its Δ,
the QDQ export, the `repq` recipe end to end, negative cases, and log√2 against uniform at 4 bits.

Δ is recomputed here from the softmax outputs collected with a plain ONNX Runtime session: candidates
quantile(A, p) for RepQ-ViT's p, the one whose log√2 fake quantization (`QuantSpec(kind="log_sqrt2")`,
tested in tests/backends and tests/ir) has the smallest mean squared error.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

import qcompile
from qcompile import runtime
from qcompile.ir import quant_meta
from qcompile.ir.quant_meta import QuantSpec
from qcompile.pipeline.context import CalibrationData, PipelineContext
from qcompile.pipeline.numerics import sqnr_db
from qcompile.pipeline.run import run_passes
from qcompile.runtime import log_quant, qdq
from qcompile.testing.builders import tiny_encoder, tiny_encoder_proto, tiny_inputs

QUANTILES = (0.999, 0.9999, 0.99999)


def _context(calibration: CalibrationData) -> PipelineContext:
    return PipelineContext(calibration=calibration, progress=False)


def _probs(model: ir.Model) -> ir.Value:
    return next(n.outputs[0] for n in model.graph if n.op_type == "Softmax")


def _collect(model: ir.Model, name: str, calibration: CalibrationData) -> np.ndarray:
    session = runtime.make_session(runtime.with_outputs(model, [name]))
    return np.concatenate([runtime.run(session, f, [name])[name].reshape(-1) for f in calibration.batches()]).astype(
        np.float64
    )


def log_fake_quant(x: np.ndarray, delta: float, bits: int) -> np.ndarray:
    return (
        QuantSpec(bits, False, np.float32(delta), np.int32(0), None, kind="log_sqrt2")
        .fake_quantize(x)
        .astype(np.float64)
    )


def expected_delta(a: np.ndarray, bits: int) -> float:
    deltas = [float(np.quantile(a, p)) for p in QUANTILES]
    errors = [float(np.mean((a - log_fake_quant(a, d, bits)) ** 2)) for d in deltas]
    return deltas[int(np.argmin(errors))]


def uniform_fake_quant(x: np.ndarray, lo: float, hi: float, bits: int) -> np.ndarray:
    """Asymmetric b-bit uniform quantizer on [min(lo, 0), max(hi, 0)]."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    levels = 2**bits - 1
    step = (hi - lo) / levels
    zero = np.clip(np.round(-lo / step), 0, levels)
    return (np.clip(np.round(x / step) + zero, 0, levels) - zero) * step


def best_uniform_sqnr(a: np.ndarray, bits: int) -> float:
    """The best SQNR a uniform asymmetric quantizer reaches on `a` over min/max and the quantile ranges."""
    ranges = [(float(a.min()), float(a.max()))] + [
        (float(np.quantile(a, 1 - p)), float(np.quantile(a, p))) for p in QUANTILES
    ]
    return max(sqnr_db(a, uniform_fake_quant(a, lo, hi, bits)) for lo, hi in ranges)


@pytest.mark.parametrize("bits", [8, 4, 3])
def test_the_softmax_output_gets_a_log_sqrt2_spec_with_the_searched_delta(bits):
    tiny = tiny_encoder()
    probs = _probs(tiny.model)
    a = _collect(tiny.model, probs.name, tiny.calibration)
    (record,) = run_passes(tiny.model, f"log-softmax:act_bits={bits}", context=_context(tiny.calibration))
    assert record["modified"] and record["stats"]["quantized"] == 1 and record["stats"]["skipped"] == {}
    spec = quant_meta.get_quant(probs)
    assert spec is not None and spec.kind == "log_sqrt2" and spec.bits == bits
    assert not spec.signed and spec.axis is None and int(spec.zero_point) == 0
    delta = float(spec.scale)
    assert 0.0 < delta <= 1.0
    assert delta == pytest.approx(expected_delta(a, bits), rel=1e-6)
    assert record["stats"]["delta_range"] == [pytest.approx(delta, rel=1e-6)] * 2
    # LOSSY: the numeric check reports an SQNR, which is finite (the outputs changed) and not terrible
    assert record["numerics"] == "LOSSY" and np.isfinite(record["sqnr_db"]) and record["sqnr_db"] > 5.0
    # nothing else was annotated
    assert [v.name for v in quant_meta.quantized_values(tiny.model.graph)] == [probs.name]


def test_the_qdq_model_uses_the_qcompile_log_functions_and_runs():
    tiny = tiny_encoder()
    run_passes(tiny.model, "log-softmax:act_bits=4", context=_context(tiny.calibration))
    probs = _probs(tiny.model)
    spec = quant_meta.get_quant(probs)
    exported = qdq.to_qdq(tiny.model)
    ops = [(n.domain, n.op_type) for n in exported.graph]
    assert ops.count((log_quant.DOMAIN, log_quant.QUANTIZE)) == 1
    assert ops.count((log_quant.DOMAIN, log_quant.DEQUANTIZE)) == 1
    assert not any(op in ("QuantizeLinear", "DequantizeLinear") for _, op in ops)
    av = next(n for n in exported.graph if n.name == "attn/AV")
    assert av.inputs[0].producer().op_type == log_quant.DEQUANTIZE
    # runs in ONNX Runtime; the dequantized probabilities are the NumPy log√2 fake quantization of the
    # float ones, and codes are 4-bit
    names = [probs.name, f"{probs.name}_quantized", f"{probs.name}_dequantized"]
    session = runtime.make_session(runtime.with_outputs(exported, names))
    out = runtime.run(session, tiny.feeds, ["y", *names])
    assert out["y"].shape == tiny.feeds["x"].shape and np.all(np.isfinite(out["y"]))
    assert out[names[1]].dtype == np.uint8 and out[names[1]].max() <= 15
    np.testing.assert_allclose(out[names[2]], spec.fake_quantize(out[probs.name]), rtol=1e-6, atol=0)
    assert not np.allclose(out[names[2]], out[probs.name], rtol=1e-3, atol=1e-4)


def test_the_repq_recipe_keeps_the_log_spec_through_calibrate_and_quantize():
    tiny = tiny_encoder()
    records = run_passes(tiny.model, "repq", context=_context(tiny.calibration))
    assert [r["name"] for r in records] == ["repq-ln", "log-softmax", "calibrate", "quantize"]
    probs = _probs(tiny.model)
    spec = quant_meta.get_quant(probs)
    assert spec.kind == "log_sqrt2" and spec.bits == 8
    assert float(spec.scale) == pytest.approx(records[1]["stats"]["delta_range"][0], rel=1e-6)
    # quantize annotated the other MatMul inputs uniformly and left the softmax output alone
    quantized = {v.name: quant_meta.get_quant(v) for v in quant_meta.quantized_values(tiny.model.graph)}
    assert {"ln1.out", "ln2.out", "ctx", "gelu", "v.h"} <= set(quantized)
    assert [name for name, s in quantized.items() if s.kind == "log_sqrt2"] == [probs.name]
    for record in records[1], records[3]:
        assert np.isfinite(record["sqnr_db"])
    exported = qdq.to_qdq(tiny.model)
    assert any(n.op_type == log_quant.QUANTIZE for n in exported.graph)
    y = runtime.run(runtime.make_session(exported), tiny.feeds)["y"]
    assert np.all(np.isfinite(y))


def test_a_softmax_read_by_something_other_than_a_matmul_is_skipped_with_the_reason():
    proto = tiny_encoder_proto()
    # probs → Mul(·, 1) → attn/AV: the softmax output's consumer is a Mul
    for node in proto.graph.node:
        if node.name == "attn/AV":
            node.input[0] = "probs.scaled"
    index = next(i for i, n in enumerate(proto.graph.node) if n.op_type == "Softmax")
    proto.graph.node.insert(
        index + 1, helper.make_node("Mul", ["probs", "one"], ["probs.scaled"], name="attn/ProbsMul")
    )
    model = ir.serde.deserialize_model(proto)
    calibration = CalibrationData.from_list(tiny_inputs(2, 4, seed=1))
    (record,) = run_passes(model, "log-softmax", context=_context(calibration))
    assert not record["modified"] and record["stats"]["quantized"] == 0
    assert "not a MatMul" in record["stats"]["skipped"]["attn/Softmax"]
    assert quant_meta.get_quant(_probs(model)) is None


def test_a_softmax_output_that_is_a_graph_output_is_skipped():
    proto = tiny_encoder_proto()
    proto.graph.output.append(helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, None))
    model = ir.serde.deserialize_model(proto)
    (record,) = run_passes(model, "log-softmax", context=_context(CalibrationData.from_list(tiny_inputs(2, 4, seed=1))))
    assert record["stats"]["quantized"] == 0 and "graph output" in record["stats"]["skipped"]["attn/Softmax"]


def test_no_calibration_data_is_an_input_error():
    with pytest.raises(qcompile.InputError, match="calibration data"):
        run_passes(tiny_encoder().model, "log-softmax")


@pytest.mark.parametrize("bits", [1, 9])
def test_act_bits_outside_2_8_is_an_input_error(bits):
    tiny = tiny_encoder()
    with pytest.raises(qcompile.InputError, match="act_bits"):
        run_passes(tiny.model, f"log-softmax:act_bits={bits}", context=_context(tiny.calibration))


def test_a_second_run_leaves_the_quantized_softmax_alone():
    tiny = tiny_encoder()
    run_passes(tiny.model, "log-softmax:act_bits=4", context=_context(tiny.calibration))
    spec = quant_meta.get_quant(_probs(tiny.model))
    (record,) = run_passes(tiny.model, "log-softmax:act_bits=6", context=_context(tiny.calibration))
    assert not record["modified"] and record["stats"]["skipped"] == {"attn/Softmax": "already quantized"}
    assert quant_meta.get_quant(_probs(tiny.model)) is spec


def _attention_probabilities(tokens: int) -> np.ndarray:
    tiny = tiny_encoder()
    data = CalibrationData.from_list(tiny_inputs(4, 4, tokens=tokens, seed=1))
    return _collect(tiny.model, _probs(tiny.model).name, data)


def _log_vs_uniform(tokens: int, bits: int = 4) -> tuple[float, float]:
    a = _attention_probabilities(tokens)
    log_sqnr = sqnr_db(a, log_fake_quant(a, expected_delta(a, bits), bits))
    return log_sqnr, best_uniform_sqnr(a, bits)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="measured: on tiny_encoder's own 8-token inputs (8 probabilities per row, mostly ≈ 1/8) the "
    "4-bit log√2 quantizer reaches 19.9 dB SQNR on the attention probabilities against 21.5 dB for the "
    "MSE-searched uniform 4-bit one (20.2 dB min/max): RepQ-ViT's claim needs longer rows (see the next test)",
)
def test_log_sqrt2_beats_uniform_at_4_bits_on_the_tiny_models_attention_probabilities():
    log_sqnr, uniform_sqnr = _log_vs_uniform(tokens=8)
    assert log_sqnr > uniform_sqnr


@pytest.mark.parametrize("tokens", [64, 197])
def test_log_sqrt2_beats_uniform_at_4_bits_on_vit_length_attention(tokens):
    """RepQ-ViT's claim at ViT sequence lengths (197 = ViT-B/16's tokens): most probabilities are far below
    one uniform step, where the log grid still resolves them."""
    log_sqnr, uniform_sqnr = _log_vs_uniform(tokens)
    assert log_sqnr > uniform_sqnr + 1.0, (log_sqnr, uniform_sqnr)


def test_the_pass_on_long_rows_finds_the_searched_delta_and_beats_uniform():
    """The pass on 64-token calibration data: its Δ is the searched one, and its quantizer beats the best
    uniform 4-bit one on the same probabilities."""
    tiny = tiny_encoder()
    data = CalibrationData.from_list(tiny_inputs(4, 4, tokens=64, seed=1))
    a = _collect(tiny.model, "probs", data)
    run_passes(tiny.model, "log-softmax:act_bits=4", context=_context(data), check_numerics=False)
    spec = quant_meta.get_quant(_probs(tiny.model))
    assert float(spec.scale) == pytest.approx(expected_delta(a, 4), rel=1e-6)
    assert sqnr_db(a, spec.fake_quantize(a)) > best_uniform_sqnr(a, 4) + 1.0
