"""End to end through the Python API: model in (ONNX file or torch module), w8a8, QDQ file out, run by
ONNX Runtime. SQNRs are computed here from the float and exported models' outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import qcompile
from qcompile import PipelineContext, Property
from qcompile.backends.onnx import export
from qcompile.ir.properties import get_properties
from qcompile.pipeline.run import CHECK_SAMPLES
from qcompile.testing.builders import tiny_encoder, tiny_encoder_proto


def _sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    reference, test = reference.astype(np.float64), test.astype(np.float64)
    return 10.0 * np.log10(np.sum(reference**2) / np.sum((reference - test) ** 2))


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_an_onnx_file_quantized_with_w8a8_exports_a_runnable_close_model(tmp_path: Path) -> None:
    source = tmp_path / "tiny.onnx"
    onnx.save(tiny_encoder_proto(), str(source))
    data = tiny_encoder()
    model = qcompile.load(source)

    records = qcompile.run_passes(model, "w8a8", context=PipelineContext(calibration=data.calibration, progress=False))
    artifact = export(model, tmp_path / "out" / "model.qdq.onnx")

    assert get_properties(model) == {Property.CALIBRATED, Property.QUANTIZED}
    float_session, quant_session = _session(source), _session(artifact)
    # The numeric check's SQNR is the exported artifact's SQNR on the check batch.
    check = {k: v[:CHECK_SAMPLES] for k, v in data.calibration.first_batch().items()}
    check_sqnr = _sqnr_db(float_session.run(["y"], check)[0], quant_session.run(["y"], check)[0])
    assert records[-1]["sqnr_db"] == pytest.approx(check_sqnr, abs=1e-3)
    # On held-out inputs the quantized model is close to the float one but not identical: 8-bit uniform
    # quantization of every MatMul input (about 6 dB per bit in theory) stays well above 30 dB.
    reference, quantized = float_session.run(["y"], data.feeds)[0], quant_session.run(["y"], data.feeds)[0]
    assert 30.0 < _sqnr_db(reference, quantized) < np.inf


def test_a_torch_module_with_a_fixed_batch_runs_through_w8a8(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    example = torch.randn(4, 16)
    model = qcompile.from_torch(module, (example,), input_names=["x"], output_names=["y"])
    rng = np.random.default_rng(0)
    batches = [{"x": rng.normal(0, 1, (4, 16)).astype(np.float32)} for _ in range(3)]

    records = qcompile.run_passes(
        model, "w8a8", context=PipelineContext(calibration=qcompile.CalibrationData.from_list(batches), progress=False)
    )
    artifact = export(model, tmp_path / "mlp.qdq.onnx")

    assert [r["name"] for r in records] == ["calibrate", "quantize"] and records[0]["stats"]["values"] == 2
    x = rng.normal(0, 0.5, (4, 16)).astype(np.float32)  # inside the calibrated range: no clipping
    assert batches[0]["x"].min() < x.min() and x.max() < batches[0]["x"].max()
    with torch.no_grad():
        reference = module(torch.from_numpy(x)).numpy()
    quantized = _session(artifact).run(["y"], {"x": x})[0]
    assert 30.0 < _sqnr_db(reference, quantized) < np.inf
