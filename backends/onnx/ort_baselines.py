"""The peer qcompile replaces: ONNX Runtime's own quantizers, run on the same model and samples.

* `ort_quantize_static` — `onnxruntime.quantization.quantize_static`, QDQ format, per-channel int8
  weights, uint8 activations, MinMax calibration over the same calibration batches, same op types.
  `reduce_range=True` (7-bit weights): on AVX2 machines without VNNI ONNX Runtime's u8×s8 kernels
  saturate int16 pair sums with full-range weights, and ONNX Runtime documents reduce_range for them.
* `ort_quantize_dynamic` — `quantize_dynamic` (MatMulInteger with per-batch activation ranges), also
  with `reduce_range=True`.

ONNX Runtime writes temporary augmented models while calibrating; `scratch` confines them to a folder
the caller owns (inside the run's output directory) and that folder is removed afterwards. A large float
model (`qcompile.ir.is_large`) is handed over with external data (`use_external_data_format`), and the
quantized result is read back whole.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx
import onnx_ir as ir

from qcompile.ir import is_large
from qcompile.pipeline.context import CalibrationData

__all__ = ["ort_quantize_static", "ort_quantize_dynamic"]


@contextlib.contextmanager
def _scratch_tempdir(scratch: Path) -> Iterator[Path]:
    scratch.mkdir(parents=True, exist_ok=True)
    previous = tempfile.tempdir
    tempfile.tempdir = str(scratch)
    try:
        yield scratch
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(scratch, ignore_errors=True)


def _save(model: ir.Model, path: Path) -> bool:
    """Write `model` for ONNX Runtime's quantizer; a large one with external data. Returns whether large."""
    large = is_large(model)
    if large:
        ir.save(model, path, external_data=f"{path.name}.data")
    else:
        ir.save(model, path)
    return large


def _read(path: Path) -> bytes:
    """The quantized model's bytes, its external data (if ONNX Runtime wrote any) read in."""
    return onnx.load(str(path)).SerializeToString()


def _reader(data: CalibrationData):
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = data.batches()

        def get_next(self):
            return next(self._batches, None)

        def rewind(self) -> None:
            self._batches = data.batches()

    return _Reader()


def ort_quantize_static(
    model: ir.Model, data: CalibrationData, scratch: Path, op_types: Sequence[str] = ("MatMul", "Gemm")
) -> bytes:
    """ONNX Runtime's static QDQ quantization of `model`; returns the quantized model's bytes."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with _scratch_tempdir(scratch) as folder:
        source, target = folder / "float.onnx", folder / "ort_static.onnx"
        large = _save(model, source)
        logging.getLogger().setLevel(logging.ERROR)
        quantize_static(
            str(source),
            str(target),
            _reader(data),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            use_external_data_format=large,
        )
        return _read(target)


def ort_quantize_dynamic(model: ir.Model, scratch: Path, op_types: Sequence[str] = ("MatMul", "Gemm")) -> bytes:
    """ONNX Runtime's dynamic quantization of `model`; returns the quantized model's bytes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _scratch_tempdir(scratch) as folder:
        source, target = folder / "float.onnx", folder / "ort_dynamic.onnx"
        large = _save(model, source)
        quantize_dynamic(
            str(source),
            str(target),
            op_types_to_quantize=list(op_types),
            per_channel=True,
            reduce_range=True,
            weight_type=QuantType.QInt8,
            use_external_data_format=large,
        )
        return _read(target)
