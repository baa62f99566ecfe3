"""Tests of `backends.onnx.export`: runnable files, written atomically with mode 0644."""

from __future__ import annotations

import importlib
import os
import stat
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import qcompile
from qcompile import runtime
from qcompile.backends.onnx import FORMATS, export
from qcompile.errors import InputError
from qcompile.runtime.qdq import to_qdq

export_module = importlib.import_module("qcompile.backends.onnx.export")


@pytest.fixture
def quantized(tiny):
    context = qcompile.PipelineContext(calibration=tiny.calibration, progress=False)
    qcompile.run_passes(tiny.model, "w8a8", context=context, check_numerics=False)
    return tiny


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_export_writes_a_qdq_file_onnx_runtime_runs_like_the_in_memory_model(quantized, tmp_path: Path) -> None:
    path = export(quantized.model, tmp_path / "model.qdq.onnx")

    assert path == tmp_path / "model.qdq.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (from_file,) = session.run(["y"], quantized.feeds)
    in_memory = runtime.run(runtime.make_session(to_qdq(quantized.model)), quantized.feeds)["y"]
    np.testing.assert_array_equal(from_file, in_memory)
    assert "QuantizeLinear" in _ops(path) and "DequantizeLinear" in _ops(path)


def test_the_float_format_writes_the_model_without_quantizers(quantized, tmp_path: Path) -> None:
    path = export(quantized.model, tmp_path / "model.onnx", fmt="float")
    assert not {"QuantizeLinear", "DequantizeLinear"} & set(_ops(path))
    assert len(_ops(path)) == len(quantized.model.graph)


def test_export_leaves_no_temporary_files(quantized, tmp_path: Path) -> None:
    formats = [
        fmt for fmt in FORMATS if fmt != "int"
    ]  # `int` needs a lowered model (tests/passes/test_intonly_encoder.py)
    for fmt in formats:
        export(quantized.model, tmp_path / f"{fmt}.onnx", fmt=fmt)
    assert sorted(os.listdir(tmp_path)) == sorted(f"{fmt}.onnx" for fmt in formats)


def test_exported_files_have_mode_0644_whatever_the_umask(quantized, tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        path = export(quantized.model, tmp_path / "model.qdq.onnx")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_export_creates_missing_parent_directories(quantized, tmp_path: Path) -> None:
    path = export(quantized.model, tmp_path / "a" / "b" / "model.qdq.onnx")
    assert path.is_file() and os.listdir(tmp_path / "a" / "b") == ["model.qdq.onnx"]


def test_an_unknown_format_is_an_input_error_that_writes_nothing(quantized, tmp_path: Path) -> None:
    target = tmp_path / "out" / "model.onnx"
    with pytest.raises(InputError, match="unknown export format 'tflite' \\(choose from qdq, int, float\\)"):
        export(quantized.model, target, fmt="tflite")
    assert not target.exists() and not target.parent.exists()


def test_a_failed_write_leaves_no_partial_file_and_keeps_the_old_one(
    quantized, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "model.qdq.onnx"
    target.write_bytes(b"previous artifact")

    def failing_save(model, path, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(export_module.ir, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        export(quantized.model, target)

    assert os.listdir(tmp_path) == ["model.qdq.onnx"]
    assert target.read_bytes() == b"previous artifact"


def test_export_replaces_an_existing_file(quantized, tmp_path: Path) -> None:
    target = tmp_path / "model.qdq.onnx"
    target.write_bytes(b"old")
    export(quantized.model, target)
    onnx.checker.check_model(onnx.load(str(target)))
    assert os.listdir(tmp_path) == ["model.qdq.onnx"]


def test_export_does_not_modify_the_model(quantized, tmp_path: Path) -> None:
    from qcompile.ir import model_to_bytes

    before = model_to_bytes(quantized.model)
    export(quantized.model, tmp_path / "model.qdq.onnx")
    assert model_to_bytes(quantized.model) == before
