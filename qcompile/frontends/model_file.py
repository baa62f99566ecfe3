"""Reading an ONNX file from disk, refusing anything that is not a readable regular file holding one.

A named pipe or device would block or never end, a directory is not a model, and a protobuf larger than
2 GB cannot be valid (models that large keep their weights in external data), so each of those is
refused from `stat` alone, before a byte is read. Every failure is an `InputError` naming the file.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from qcompile.errors import InputError

__all__ = ["read_model_proto", "regular_file_status", "MAX_PROTO_BYTES"]

MAX_PROTO_BYTES = 2**31 - 1


def regular_file_status(path: Path, what: str) -> os.stat_result:
    """`os.stat(path)` of a regular file (symlinks followed), or an `InputError` saying why it is not one."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as error:
        raise InputError(f"{path}: cannot be read ({os.strerror(error.errno or errno.EIO)})") from None
    if stat.S_ISDIR(status.st_mode):
        raise InputError(f"{path}: is a directory, not {what}")
    if not stat.S_ISREG(status.st_mode):
        raise InputError(f"{path}: not a regular file (a pipe, socket or device cannot be {what})")
    return status


def _read_bytes(path: Path) -> bytes:
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # never blocks, even if swapped for a pipe
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as error:
        raise InputError(f"{path}: cannot be read ({os.strerror(error.errno or errno.EIO)})") from None
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise InputError(f"{path}: not a regular file")
        try:
            return handle.read(MAX_PROTO_BYTES + 1)
        except OSError as error:
            raise InputError(f"{path}: cannot be read ({os.strerror(error.errno or errno.EIO)})") from None


def read_model_proto(path: Path) -> onnx.ModelProto:
    """Parse `path` as an ONNX ModelProto without loading its external data."""
    status = regular_file_status(path, "an ONNX file")
    if status.st_size > MAX_PROTO_BYTES:
        raise InputError(
            f"{path}: over 2 GB, which no ONNX protobuf can be (large models keep weights in external data)"
        )
    data = _read_bytes(path)
    if not data:
        raise InputError(f"{path}: not an ONNX model (empty file)")
    try:
        proto = onnx.ModelProto.FromString(data)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{path}: not a valid ONNX file (protobuf parse failed: {reason})") from None
    if not proto.HasField("graph") or proto.ir_version <= 0 or len(proto.graph.node) == 0:
        raise InputError(f"{path}: not an ONNX model (no graph, IR version or nodes)")
    return proto
