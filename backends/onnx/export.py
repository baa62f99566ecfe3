"""Write a model as an ONNX file ONNX Runtime runs: `export(model, path, fmt="qdq")`.

`qdq` writes every uniform quantizer as QuantizeLinear/DequantizeLinear and every log√2 quantizer as the
`qcompile` domain functions of `log_quant.py` (see `qdq.py`); `int` writes a model the `intonly` pass
lowered (INTEGER_ONLY: integer kernels as `qcompile` functions, no float between the quantizers) as it
is; `float` writes the model as it is. The file is written to a temporary name in the same directory and renamed into place, so a
failed export never leaves a partial artifact. Models over 2 GB are written with external data.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx_ir as ir

from qcompile.backends.onnx.qdq import to_qdq
from qcompile.errors import InputError
from qcompile.ir.properties import Property, get_properties

__all__ = ["export", "FORMATS"]

FORMATS = ("qdq", "int", "float")
_EXTERNAL_THRESHOLD = 1_800_000_000


def export(model: ir.Model, path: str | os.PathLike, fmt: str = "qdq") -> Path:
    """Serialize `model` in format `fmt` to `path` atomically; returns the path."""
    if fmt not in FORMATS:
        raise InputError(f"unknown export format '{fmt}' (choose from {', '.join(FORMATS)})")
    path = Path(path)
    if fmt == "int" and Property.INTEGER_ONLY not in get_properties(model):
        raise InputError("export format 'int' needs a model lowered by the 'intonly' pass")
    out = to_qdq(model) if fmt == "qdq" else model
    size = sum(v.const_value.nbytes for v in out.graph.initializers.values() if v.const_value is not None)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        if size > _EXTERNAL_THRESHOLD:
            ir.save(out, temp, external_data=f"{path.name}.data")
        else:
            ir.save(out, temp)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return path
