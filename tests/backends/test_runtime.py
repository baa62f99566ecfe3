"""Tests of the ONNX Runtime helpers: sessions from every model form, intermediates exposed as outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator
from qcompile.backends.onnx import runtime

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
    proto = onnx.load_from_string(runtime.with_outputs(tiny.model, ["y", "ctx"]))
    assert [o.name for o in proto.graph.output] == ["y", "ctx"]
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
