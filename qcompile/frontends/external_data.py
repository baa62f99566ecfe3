"""External tensor data: contained in the model's folder, checked, then read into memory once.

The rule is the one onnx and onnx_ir apply since CVE-2024-27318/27319, made strict: a tensor's
`location` must be a relative path that, after every symlink is resolved, names a regular file inside
the folder of the model file (not the model file itself). Anything else is refused before the target is
looked at, with a message built from the model's own text only, so a hostile model learns nothing about
files outside its folder (not whether they exist, nor their size). `offset` and `length` must be
non-negative decimal integers, and the bytes they name must lie inside the file and be exactly as many
as the tensor's dims and type need.

After the check the bytes are read into the tensor (`raw_data`) and the reference is dropped, so no later
step (clones, passes, ONNX Runtime sessions, export) ever resolves a path again: the model in memory is
self-contained, whatever the working directory.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx.external_data_helper import _get_all_tensors, uses_external_data

from qcompile.errors import InputError

__all__ = ["FIXED_SIZE", "ExternalSpan", "contained_file", "check_external_data", "load_external_data"]

FIXED_SIZE = {
    onnx.TensorProto.FLOAT: 4,
    onnx.TensorProto.DOUBLE: 8,
    onnx.TensorProto.FLOAT16: 2,
    onnx.TensorProto.BFLOAT16: 2,
    onnx.TensorProto.INT8: 1,
    onnx.TensorProto.UINT8: 1,
    onnx.TensorProto.INT16: 2,
    onnx.TensorProto.UINT16: 2,
    onnx.TensorProto.INT32: 4,
    onnx.TensorProto.UINT32: 4,
    onnx.TensorProto.INT64: 8,
    onnx.TensorProto.UINT64: 8,
    onnx.TensorProto.BOOL: 1,
    onnx.TensorProto.COMPLEX64: 8,
    onnx.TensorProto.COMPLEX128: 16,
}


@dataclass(frozen=True)
class ExternalSpan:
    """Where one tensor's bytes are: a checked file inside the model folder, an offset and a length."""

    tensor: onnx.TensorProto
    file: Path
    offset: int
    length: int


def _entries(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def _non_negative(text: str | None, key: str, where: str) -> int | None:
    if text is None or text == "":
        return None
    if not text.isascii() or not text.isdigit():
        raise InputError(f"{where}: external data {key} {text[:40]!r} is not a non-negative integer")
    return int(text)


def _expected_bytes(tensor: onnx.TensorProto) -> int | None:
    size = FIXED_SIZE.get(tensor.data_type)
    if size is None:
        return None  # strings and sub-byte types: the length decides
    return math.prod(tensor.dims) * size


def contained_file(location: str, folder: Path, model_file: Path | None, where: str) -> Path:
    """The regular file `location` names inside `folder` (symlinks resolved), or an `InputError` that
    says nothing about what lies outside."""
    if not location or "\x00" in location:
        raise InputError(f"{where}: external data location is empty or holds a NUL byte")
    shown = location[:120]
    if os.path.isabs(location) or location.startswith(("\\", "~")) or (len(location) > 1 and location[1] == ":"):
        raise InputError(
            f"{where}: external data location {shown!r} is absolute; it must be a path inside the model's folder"
        )
    resolved = Path(os.path.realpath(folder / location))  # symlinks resolved, whether or not it exists
    if not resolved.is_relative_to(folder):
        raise InputError(f"{where}: external data location {shown!r} leads outside the model's folder")
    try:
        status = os.stat(resolved)
    except OSError:
        raise InputError(f"{where}: external data file {shown!r} not found in the model's folder") from None
    if not stat.S_ISREG(status.st_mode):
        raise InputError(f"{where}: external data location {shown!r} is not a regular file")
    if resolved == model_file:
        raise InputError(f"{where}: external data location {shown!r} is the model file itself")
    return resolved


def check_external_data(proto: onnx.ModelProto, model_path: Path, source: str) -> list[ExternalSpan]:
    """Check every external tensor of `proto` (graph, subgraphs, functions) against the containment rule
    and its own dims; return where each one's bytes are. Raises `InputError` naming the tensor."""
    folder = Path(os.path.realpath(model_path.parent))
    model_file = Path(os.path.realpath(model_path))
    spans = []
    for tensor in _get_all_tensors(proto):
        if not uses_external_data(tensor):
            continue
        where = f"{source}: tensor '{tensor.name[:120]}'"
        entries = _entries(tensor)
        file = contained_file(entries.get("location", ""), folder, model_file, where)
        offset = _non_negative(entries.get("offset"), "offset", where) or 0
        length = _non_negative(entries.get("length"), "length", where)
        expected = _expected_bytes(tensor)
        if length is None:
            length = expected if expected is not None else file.stat().st_size - offset
        if expected is not None and length != expected:
            raise InputError(
                f"{where}: external data length {length} does not match its dims and type ({expected} bytes)"
            )
        if offset + length > file.stat().st_size:
            raise InputError(
                f"{where}: external data bytes {offset}..{offset + length} lie past the end of "
                f"'{entries['location'][:120]}'"
            )
        spans.append(ExternalSpan(tensor, file, offset, length))
    return spans


def load_external_data(spans: list[ExternalSpan]) -> None:
    """Read each span into its tensor's `raw_data` and drop the external reference."""
    handles: dict[Path, object] = {}
    try:
        for span in spans:
            handle = handles.get(span.file)
            if handle is None:
                descriptor = os.open(span.file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                handle = handles[span.file] = os.fdopen(descriptor, "rb")
                if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                    raise InputError(f"external data file '{span.file.name}' changed while it was read")
            handle.seek(span.offset)
            data = handle.read(span.length)
            if len(data) != span.length:
                raise InputError(f"external data file '{span.file.name}' changed while it was read")
            span.tensor.raw_data = data
            del span.tensor.external_data[:]
            span.tensor.ClearField("data_location")  # as if it had been stored inline
    finally:
        for handle in handles.values():
            handle.close()
