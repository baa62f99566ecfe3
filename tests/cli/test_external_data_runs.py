"""Models with external data run end to end from any working directory, a large result is written with
external data of its own (the artifact and its `.data` file land together, nothing else does), and a
model over the protobuf limit runs the whole job like a small one."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import qcompile.ir as qcompile_ir
from qcompile.cli import main
from qcompile.testing.builders import tiny_encoder_proto

export_module = importlib.import_module("qcompile.backends.onnx.export")

RUN = [
    "--passes",
    "w8a8",
    "--calib-samples",
    "4",
    "--eval-samples",
    "4",
    "--no-baselines",
    "--quiet",
    "--input-shape",
    "x=1x8x32",
]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def _save_external(folder: Path, location: str = "m.onnx.data") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(
        tiny_encoder_proto(),
        str(folder / "m.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )
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
    assert sorted(p.name for p in (tmp_path / "out_external").iterdir()) == [
        "model.qdq.onnx",
        "report.html",
        "report.json",
    ]


def test_a_large_result_is_written_with_external_data_and_both_files_land(
    tmp_path: Path, isolated_cache: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_module, "EXTERNAL_THRESHOLD", 1000)  # the tiny encoder's weights exceed it
    model = _save_external(tmp_path / "model")
    out = tmp_path / "out"

    code, err = _run([str(model), "-o", str(out), *RUN], capsys)

    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "model.qdq.onnx",
        "model.qdq.onnx.data",
        "report.html",
        "report.json",
    ]
    proto = onnx.load(str(out / "model.qdq.onnx"), load_external_data=False)
    locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"model.qdq.onnx.data"}
    session = ort.InferenceSession(str(out / "model.qdq.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(1, 8, 32)).astype(np.float32)
    assert np.isfinite(session.run(None, {"x": x})[0]).all()


def test_a_model_over_the_protobuf_limit_runs_the_whole_job_like_a_small_one(
    tmp_path: Path, isolated_cache: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the limits lowered below the tiny encoder's size, every step takes the large-model path
    (copies as object graphs, sessions fed initializers from memory, ONNX Runtime's quantizers through
    external data, the artifact written with external data): metrics and outputs equal the small path's."""
    model = _save_external(tmp_path / "model")
    argv = [a for a in RUN if a != "--no-baselines"]
    code, err = _run([str(model), "-o", str(tmp_path / "small"), *argv], capsys)
    assert code == 0, err
    monkeypatch.setattr(qcompile_ir, "PROTO_LIMIT", 1000)
    monkeypatch.setattr(export_module, "EXTERNAL_THRESHOLD", 1000)

    code, err = _run([str(model), "-o", str(tmp_path / "large"), *argv], capsys)

    assert code == 0, err
    reports = [json.loads((tmp_path / name / "report.json").read_text()) for name in ("small", "large")]
    assert reports[1]["all_metrics"] == reports[0]["all_metrics"]
    assert set(reports[1]["all_metrics"]) == {"ort_fp32", "qcompile", "ort_int8_static", "ort_int8_dynamic"}
    assert sorted(p.name for p in (tmp_path / "large").iterdir()) == [
        "model.qdq.onnx",
        "model.qdq.onnx.data",
        "report.html",
        "report.json",
    ]
    x = np.random.default_rng(1).normal(size=(2, 8, 32)).astype(np.float32)
    outputs = [
        ort.InferenceSession(str(tmp_path / name / "model.qdq.onnx"), providers=["CPUExecutionProvider"]).run(
            None, {"x": x}
        )[0]
        for name in ("small", "large")
    ]
    np.testing.assert_array_equal(outputs[1], outputs[0])


def _over_two_gigabytes(path: Path) -> None:
    """x[batch, 1024] → MatMul 1024×270000 → Relu → MatMul 270000×1024: 2.21 GB of float32 weights,
    saved with external data (one protobuf cannot hold it)."""
    import onnx_ir as ir

    columns = 270_000
    rng = np.random.default_rng(0)
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["batch", 1024]))
    weights = []
    for name, shape, scale in (("w1", (1024, columns), 0.03), ("w2", (columns, 1024), 0.002)):
        value = ir.Value(
            name=name, const_value=ir.tensor(rng.standard_normal(shape, dtype=np.float32) * scale, name=name)
        )
        value.dtype, value.shape = ir.DataType.FLOAT, ir.Shape(shape)
        weights.append(value)
    first = ir.node("MatMul", [x, weights[0]], name="mm1")
    relu = ir.node("Relu", [first.outputs[0]], name="relu")
    second = ir.node("MatMul", [relu.outputs[0], weights[1]], name="mm2")
    second.outputs[0].name, second.outputs[0].dtype, second.outputs[0].shape = (
        "y",
        ir.DataType.FLOAT,
        ir.Shape(["batch", 1024]),
    )
    graph = ir.Graph(
        [x], [second.outputs[0]], nodes=[first, relu, second], initializers=weights, opset_imports={"": 17}, name="big"
    )
    ir.save(ir.Model(graph, ir_version=9), path, external_data=f"{path.name}.data")


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("QCOMPILE_FULL") != "1", reason="2.2 GB model, ~3.5 min and ~16 GB peak RSS: QCOMPILE_FULL=1"
)
def test_a_real_model_over_two_gigabytes_quantizes_end_to_end(tmp_path: Path, isolated_cache: Path, capsys) -> None:
    model = tmp_path / "model" / "big.onnx"
    model.parent.mkdir()
    _over_two_gigabytes(model)
    assert (model.parent / "big.onnx.data").stat().st_size > 2**31

    code, err = _run(
        [
            str(model),
            "-o",
            str(tmp_path / "out"),
            "--passes",
            "w8a8",
            "--calib-samples",
            "8",
            "--eval-samples",
            "8",
            "--quiet",
        ],
        capsys,
    )

    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["metric"]["quantized"] > 0.99  # cosine to the float model's outputs
    assert set(report["all_metrics"]) == {"ort_fp32", "qcompile", "ort_int8_static", "ort_int8_dynamic"}
