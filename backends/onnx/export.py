"""Write a model as an ONNX file ONNX Runtime runs: `export(model, path, fmt="qdq")`.

`qdq` writes every uniform quantizer as QuantizeLinear/DequantizeLinear and every log√2 quantizer as the
`qcompile` domain functions of `log_quant.py` (see `qdq.py`). `int8_weights` chooses the QDQ form: True
writes weight codes as int8 so ONNX Runtime fuses them into its fast u8×s8 kernels, False as uint8 (zero
point 128: its u8×u8 kernels); both compute exactly the same values. The default (None) is
`kernels.int8_weights_exact()`: int8 where this CPU's u8×s8 kernels are exact (VNNI/AMX), uint8 elsewhere
(docs/qdq-export.md). `int` writes a model the `intonly` pass
lowered (INTEGER_ONLY: integer kernels as `qcompile` functions, no float between the quantizers) as it
is; `float` writes the model as it is. The file is written in a temporary folder beside `path` and
renamed into place, so a failed export never leaves a partial artifact. Models whose initializers hold
over `EXTERNAL_THRESHOLD` bytes (protobuf cannot hold 2 GB) are written with their tensors in
`PATH.data` beside the model, renamed into place before the model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx_ir as ir

from qcompile.backends.onnx.kernels import int8_weights_exact
from qcompile.errors import InputError
from qcompile.ir.properties import Property, get_properties
from qcompile.runtime.qdq import to_qdq

__all__ = ["export", "FORMATS", "EXTERNAL_THRESHOLD", "external_data_path"]

FORMATS = ("qdq", "int", "float")
EXTERNAL_THRESHOLD = 1_800_000_000


def external_data_path(path: str | os.PathLike) -> Path:
    """Where `export` puts the tensors of a large model written to `path`."""
    path = Path(path)
    return path.with_name(f"{path.name}.data")


def export(
    model: ir.Model,
    path: str | os.PathLike,
    fmt: str = "qdq",
    int8_weights: bool | None = None,
    kv_storage: bool = True,
) -> Path:
    """Serialize `model` in format `fmt` to `path` atomically; returns the path. `int8_weights` (qdq only):
    int8 weight codes (True), uint8 (False), or int8 where that is exact and fast on this CPU (None).
    `kv_storage` (qdq only): a quantized KV cache is stored as codes with scales (`runtime.kv_storage`)."""
    if fmt not in FORMATS:
        raise InputError(f"unknown export format '{fmt}' (choose from {', '.join(FORMATS)})")
    path = Path(path)
    if fmt == "int" and Property.INTEGER_ONLY not in get_properties(model):
        raise InputError("export format 'int' needs a model lowered by the 'intonly' pass")
    if fmt == "qdq":
        out = to_qdq(
            model, int8_weights=int8_weights_exact() if int8_weights is None else int8_weights, kv_storage=kv_storage
        )
    else:
        out = model
    size = sum(v.const_value.nbytes for v in out.graph.initializers.values() if v.const_value is not None)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = external_data_path(path)
    temp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        if size > EXTERNAL_THRESHOLD:
            ir.save(out, temp / path.name, external_data=data.name)
            os.chmod(temp / data.name, 0o644)
            os.replace(temp / data.name, data)
        else:
            ir.save(out, temp / path.name)
            data.unlink(missing_ok=True)  # a stale one from an earlier, larger export
        os.chmod(temp / path.name, 0o644)
        os.replace(temp / path.name, path)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return path
