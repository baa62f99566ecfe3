"""Tests of the calibrate pass: ranges of every MatMul activation input, checked against values computed
here with ONNX's reference evaluator over the same calibration batches."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

import qcompile
from qcompile import CalibrationData, PipelineContext, Property
from qcompile.calibration.observers import OBSERVERS
from qcompile.errors import InputError
from qcompile.ir import model_to_bytes, quant_meta
from qcompile.ir.properties import get_properties
from qcompile.passes.analysis.calibrate import CalibrateRangesPass
from qcompile.testing.builders import tiny_encoder, tiny_encoder_proto


def _context(tiny) -> PipelineContext:
    return PipelineContext(calibration=tiny.calibration, progress=False)


def _matmul_activation_names() -> list[str]:
    """Non-initializer inputs of every MatMul of the tiny encoder, read off its proto."""
    proto = tiny_encoder_proto()
    constants = {t.name for t in proto.graph.initializer}
    names: list[str] = []
    for node in proto.graph.node:
        if node.op_type == "MatMul":
            names += [n for n in node.input if n not in constants and n not in names]
    return names


def _reference_statistics(tiny, names: list[str]) -> dict[str, tuple[float, float, np.ndarray]]:
    """(min, max, per-last-axis max|x|) of each value over every calibration batch, by the reference evaluator."""
    evaluator = ReferenceEvaluator(tiny_encoder_proto())
    stats: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for feeds in tiny.calibration.batches():
        for name, array in zip(names, evaluator.run(names, feeds), strict=True):
            stats[name].append(array)
    out = {}
    for name, arrays in stats.items():
        flat = np.concatenate([a.reshape(-1, a.shape[-1]) for a in arrays]).astype(np.float64)
        out[name] = (float(flat.min()), float(flat.max()), np.abs(flat).max(axis=0))
    return out


def test_every_matmul_activation_input_gets_the_raw_min_and_max_of_the_calibration_data(tiny) -> None:
    names = _matmul_activation_names()
    assert len(names) == 8  # ln1.out (shared by q/k/v), q.h, k.t, probs, v.h, ctx, ln2.out, gelu
    expected = _reference_statistics(tiny, names)

    result = CalibrateRangesPass(context=_context(tiny))(tiny.model)

    values = {v.name: v for node in tiny.model.graph for v in node.outputs}
    recorded = {name for name, value in values.items() if quant_meta.get_range(value) is not None}
    assert recorded == set(names)
    for name in names:
        tensor_range = quant_meta.get_range(values[name])
        raw_min, raw_max, channel_absmax = expected[name]
        assert tensor_range.raw_min == pytest.approx(raw_min, rel=1e-5, abs=1e-6), name
        assert tensor_range.raw_max == pytest.approx(raw_max, rel=1e-5, abs=1e-6), name
        np.testing.assert_allclose(tensor_range.channel_absmax, channel_absmax, rtol=1e-5, atol=1e-6, err_msg=name)
        # min/max observer: the raw range widened to contain 0
        assert tensor_range.lo == pytest.approx(min(raw_min, 0.0), rel=1e-5, abs=1e-6), name
        assert tensor_range.hi == pytest.approx(max(raw_max, 0.0), rel=1e-5, abs=1e-6), name
        assert tensor_range.observer == "minmax" and tensor_range.samples == 16
    assert result.modified and result.stats["values"] == 8 and result.stats["samples"] == 16
    assert get_properties(tiny.model) == {Property.CALIBRATED}


def test_graph_inputs_and_weights_get_no_range(tiny) -> None:
    CalibrateRangesPass(context=_context(tiny))(tiny.model)
    assert quant_meta.get_range(tiny.model.graph.inputs[0]) is None
    assert all(quant_meta.get_range(v) is None for v in tiny.model.graph.initializers.values())


def test_calibration_streams_every_batch_exactly_once(tiny) -> None:
    batches = list(tiny.calibration.batches())
    served: list[int] = []

    def stream():
        for index, feeds in enumerate(batches):
            served.append(index)
            yield feeds

    data = CalibrationData(batches=stream, samples=sum(b["x"].shape[0] for b in batches))
    CalibrateRangesPass(context=PipelineContext(calibration=data, progress=False))(tiny.model)
    assert served == list(range(len(batches)))


def test_calibrate_leaves_the_outputs_unchanged_and_is_checked_as_exact(tiny) -> None:
    (before,) = ReferenceEvaluator(tiny_encoder_proto()).run(["y"], tiny.feeds)

    (record,) = qcompile.run_passes(tiny.model, "calibrate", context=_context(tiny))

    assert record["numerics"] == "EXACT" and record["max_abs_err"] == 0.0
    (after,) = ReferenceEvaluator(onnx.load_from_string(model_to_bytes(tiny.model))).run(["y"], tiny.feeds)
    np.testing.assert_array_equal(after, before)
    initializers = {t.name: numpy_helper.to_array(t) for t in tiny_encoder_proto().graph.initializer}
    for name, value in tiny.model.graph.initializers.items():
        np.testing.assert_array_equal(value.const_value.numpy(), initializers[name])


@pytest.mark.parametrize("observer", OBSERVERS)
def test_each_observer_records_a_range_inside_the_raw_range(tiny, observer: str) -> None:
    names = _matmul_activation_names()
    CalibrateRangesPass(observer=observer, context=_context(tiny))(tiny.model)
    values = {v.name: v for node in tiny.model.graph for v in node.outputs}
    for name in names:
        tensor_range = quant_meta.get_range(values[name])
        assert tensor_range.observer == observer
        assert tensor_range.lo <= 0.0 <= tensor_range.hi
        assert tensor_range.lo >= min(tensor_range.raw_min, 0.0) and tensor_range.hi <= max(
            tensor_range.raw_max, 0.0
        ), name


def test_clipping_observers_clip_the_outlier_channels_of_the_input(tiny) -> None:
    """ln1's input has 8x outlier channels, so ln1.out is heavy-tailed: MSE at 4 bits clips it."""
    CalibrateRangesPass(observer="mse", bits=4, context=_context(tiny))(tiny.model)
    clipped = [
        quant_meta.get_range(v)
        for node in tiny.model.graph
        for v in node.outputs
        if quant_meta.get_range(v) is not None
    ]
    assert any(r.hi < r.raw_max or r.lo > min(r.raw_min, 0.0) for r in clipped)


def test_observer_options_reach_the_observer(tiny) -> None:
    names = _matmul_activation_names()
    default, tight = tiny, tiny_encoder()
    CalibrateRangesPass(observer="percentile", context=_context(default))(default.model)
    CalibrateRangesPass(observer="percentile", percentile=90.0, context=_context(tight))(tight.model)

    def ranges(model):
        values = {v.name: v for node in model.graph for v in node.outputs}
        return [quant_meta.get_range(values[name]) for name in names]

    for wide, narrow in zip(ranges(default.model), ranges(tight.model), strict=True):
        assert narrow.hi < wide.hi and narrow.lo >= wide.lo


@pytest.mark.parametrize("observer", ["magic", "MinMax ", ""])
def test_an_unknown_observer_is_rejected(observer: str) -> None:
    with pytest.raises(ValueError, match="unknown observer"):
        CalibrateRangesPass(observer=observer)


@pytest.mark.parametrize("bits", [0, 1, 9, 16])
def test_bits_outside_2_to_8_are_rejected(bits: int) -> None:
    with pytest.raises(ValueError, match="bits must be in 2..8"):
        CalibrateRangesPass(bits=bits)


def test_bad_observer_and_bits_from_a_pass_list_are_input_errors(tiny) -> None:
    with pytest.raises(InputError, match="pass 'calibrate': unknown observer 'magic'"):
        qcompile.run_passes(tiny.model, "calibrate:observer=magic", context=_context(tiny))
    with pytest.raises(InputError, match="pass 'calibrate': bits must be in 2..8, got 9"):
        qcompile.run_passes(tiny.model, "calibrate:bits=9", context=_context(tiny))


def test_calibrate_without_data_is_an_input_error(tiny) -> None:
    with pytest.raises(InputError, match="pass 'calibrate' needs calibration data"):
        qcompile.run_passes(tiny.model, "calibrate")
    assert get_properties(tiny.model) == frozenset()


def test_op_types_choose_which_inputs_are_calibrated(tiny) -> None:
    result = CalibrateRangesPass(op_types="Softmax+Erf", context=_context(tiny))(tiny.model)
    recorded = {v.name for node in tiny.model.graph for v in node.outputs if quant_meta.get_range(v) is not None}
    assert recorded == {"scores", "gelu.s"}
    assert result.stats["values"] == 2


def test_op_types_matching_nothing_calibrate_nothing(tiny) -> None:
    result = CalibrateRangesPass(op_types="Gemm", context=_context(tiny))(tiny.model)
    assert not result.modified and result.stats["values"] == 0
