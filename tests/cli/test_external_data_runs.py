"""Models with external data run end to end from any working directory, and a large result is written
with external data of its own: the artifact and its `.data` file land together, nothing else does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import importlib

export_module = importlib.import_module("qcompile.backends.onnx.export")
from qcompile.cli import main
from qcompile.testing.builders import tiny_encoder_proto

RUN = ["--passes", "w8a8", "--calib-samples", "4", "--eval-samples", "4", "--no-baselines", "--quiet", "--input-shape", "x=1x8x32"]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def _save_external(folder: Path, location: str = "m.onnx.data") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(tiny_encoder_proto(), str(folder / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True, location=location, size_threshold=0)
    assert (folder / location).stat().st_size > 0
    return folder / "m.onnx"


def test_a_model_with_external_data_quantizes_from_another_directory_like_its_single_file_twin(
    tmp_path: Path, isolated_cache: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    external = _save_external(tmp_path / "model")
    single = tmp_path / "single" / "m.onnx"
    single.parent.mkdir()
    onnx.save(tiny_encoder_proto(), str(single))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "m.onnx.data").write_bytes(np.full(1 << 16, 7, dtype=np.uint8).tobytes())  # a decoy in the cwd
    monkeypatch.chdir(elsewhere)

    code_external, err = _run([str(external), "-o", str(tmp_path / "out_external"), *RUN], capsys)
    assert code_external == 0, err
    code_single, err = _run([str(single), "-o", str(tmp_path / "out_single"), *RUN], capsys)
    assert code_single == 0, err

    reports = [json.loads((tmp_path / name / "report.json").read_text()) for name in ("out_external", "out_single")]
    assert reports[0]["all_metrics"] == reports[1]["all_metrics"]
    artifacts = [(tmp_path / name / "model.qdq.onnx").read_bytes() for name in ("out_external", "out_single")]
    assert artifacts[0] == artifacts[1]
    assert sorted(p.name for p in (tmp_path / "out_external").iterdir()) == ["model.qdq.onnx", "report.json"]


def test_a_large_result_is_written_with_external_data_and_both_files_land(
    tmp_path: Path, isolated_cache: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_module, "EXTERNAL_THRESHOLD", 1000)  # the tiny encoder's weights exceed it
    model = _save_external(tmp_path / "model")
    out = tmp_path / "out"

    code, err = _run([str(model), "-o", str(out), *RUN], capsys)

    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["model.qdq.onnx", "model.qdq.onnx.data", "report.json"]
    proto = onnx.load(str(out / "model.qdq.onnx"), load_external_data=False)
    locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"model.qdq.onnx.data"}
    session = ort.InferenceSession(str(out / "model.qdq.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(1, 8, 32)).astype(np.float32)
    assert np.isfinite(session.run(None, {"x": x})[0]).all()
