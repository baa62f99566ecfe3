"""Tests of the ONNX Runtime helpers: sessions from every model form, intermediates exposed as outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

import qcompile.ir as qcompile_ir
from qcompile import runtime
from qcompile.ir import model_to_bytes
from qcompile.testing.builders import tiny_encoder_proto


@pytest.mark.parametrize("form", ["ir", "proto", "bytes", "path"])
def test_make_session_accepts_every_model_form(tiny, tmp_path: Path, form: str) -> None:
    proto = tiny_encoder_proto()
    if form == "ir":
        model = tiny.model
    elif form == "proto":
        model = proto
    elif form == "bytes":
        model = proto.SerializeToString()
    else:
        onnx.save(proto, str(tmp_path / "m.onnx"))
        model = str(tmp_path / "m.onnx")
    (expected,) = ReferenceEvaluator(proto).run(["y"], tiny.feeds)

    actual = runtime.run(runtime.make_session(model), tiny.feeds)["y"]

    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_with_outputs_exposes_intermediates_with_their_values(tiny) -> None:
    names = ["ln1.out", "probs", "gelu"]
    session = runtime.make_session(runtime.with_outputs(tiny.model, names), optimize=False)
    outputs = runtime.run(session, tiny.feeds, names + ["y"])
    expected = ReferenceEvaluator(tiny_encoder_proto()).run(names + ["y"], tiny.feeds)
    for name, array in zip(names + ["y"], expected, strict=True):
        np.testing.assert_allclose(outputs[name], array, rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(outputs["probs"].sum(axis=-1), 1.0, rtol=0, atol=1e-6)


def test_with_outputs_does_not_touch_the_model_or_duplicate_outputs(tiny) -> None:
    before = model_to_bytes(tiny.model)
    source = runtime.with_outputs(tiny.model, ["y", "ctx"])
    proto = onnx.load_from_string(source.proto)
    assert [o.name for o in proto.graph.output] == ["y", "ctx"]
    assert source.initializers == {}  # a small model carries its initializers in the proto
    assert model_to_bytes(tiny.model) == before


def test_a_large_model_reaches_onnx_runtime_with_its_initializers_from_memory(tiny, monkeypatch) -> None:
    """Above PROTO_LIMIT the proto holds references to no file and the session gets the arrays: same
    outputs as the small path, the model untouched, no path ever read."""
    expected = runtime.run(runtime.make_session(tiny.model), tiny.feeds)["y"]
    before = model_to_bytes(tiny.model)
    monkeypatch.setattr(qcompile_ir, "PROTO_LIMIT", 1000)

    source = runtime.with_outputs(tiny.model, ["ctx"])
    proto = onnx.load_from_string(source.proto)
    external = [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and sorted(external) == sorted(source.initializers)
    assert all(not t.raw_data for t in proto.graph.initializer if t.name in source.initializers)
    got = runtime.run(runtime.make_session(source), tiny.feeds)
    np.testing.assert_array_equal(got["y"], expected)
    assert "ctx" in got
    np.testing.assert_array_equal(runtime.run(runtime.make_session(tiny.model), tiny.feeds)["y"], expected)
    monkeypatch.setattr(qcompile_ir, "PROTO_LIMIT", 1_800_000_000)
    assert model_to_bytes(tiny.model) == before


def test_run_feeds_only_the_inputs_the_session_takes(tiny) -> None:
    session = runtime.make_session(tiny.model)
    outputs = runtime.run(session, {**tiny.feeds, "attention_mask": np.ones(3)})
    assert list(outputs) == ["y"]


@pytest.mark.parametrize(("threads", "optimize"), [(1, True), (3, False)])
def test_session_options_set_threads_and_optimization(threads: int, optimize: bool) -> None:
    options = runtime.session_options(threads, optimize)
    assert options.intra_op_num_threads == threads and options.inter_op_num_threads == 1
    level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert options.graph_optimization_level == level
