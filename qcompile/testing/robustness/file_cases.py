"""Cases of category `file`: the MODEL argument is not a readable ONNX file (or is an odd but valid one)."""

from __future__ import annotations

import gzip
import io
import os
import zipfile

import numpy as np
import onnx

from qcompile.testing.robustness import models
from qcompile.testing.robustness.case import Case, CaseDirs, model_argv, save

__all__ = ["CASES"]


def _write(data: bytes):
    def build(dirs: CaseDirs) -> None:
        dirs.model.write_bytes(data)

    return build


def _nothing(dirs: CaseDirs) -> None:
    pass


def _directory(dirs: CaseDirs) -> None:
    dirs.model.mkdir()
    save(models.mlp(), dirs.model / "inner.onnx")


def _random_bytes(dirs: CaseDirs) -> None:
    dirs.model.write_bytes(np.random.default_rng(7).bytes(4096))


def _truncated(dirs: CaseDirs) -> None:
    data = models.mlp().SerializeToString()
    dirs.model.write_bytes(data[: len(data) // 2])


def _no_graph(dirs: CaseDirs) -> None:
    proto = onnx.ModelProto(ir_version=models.IR_VERSION, producer_name="robustness")
    proto.opset_import.add(domain="", version=models.OPSET)
    save(proto, dirs.model)


def _fifo(dirs: CaseDirs) -> None:
    os.mkfifo(dirs.model)


def _unreadable(dirs: CaseDirs) -> None:
    save(models.mlp(), dirs.model)
    os.chmod(dirs.model, 0)


def _unicode_path(dirs: CaseDirs) -> None:
    save(models.mlp(), dirs.model)


def _symlink(dirs: CaseDirs) -> None:
    save(models.mlp(), dirs.model_dir / "real.onnx")
    os.symlink("real.onnx", dirs.model)


def _symlink_loop(dirs: CaseDirs) -> None:
    os.symlink("model.onnx", dirs.model)


def _dangling(dirs: CaseDirs) -> None:
    os.symlink("gone.onnx", dirs.model)


def _gzip(dirs: CaseDirs) -> None:
    dirs.model.write_bytes(gzip.compress(models.mlp().SerializeToString(), mtime=0))


def _zip(dirs: CaseDirs) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(zipfile.ZipInfo("model.onnx", (2020, 1, 1, 0, 0, 0)), models.mlp().SerializeToString())
    dirs.model.write_bytes(buffer.getvalue())


def _huge_string(dirs: CaseDirs) -> None:
    # ModelProto: ir_version (field 1, varint) = 9, then producer_name (field 2, length-delimited)
    # declared 2**40 bytes long, followed by a few bytes only.
    def varint(value: int) -> bytes:
        out = bytearray()
        while True:
            byte = value & 0x7F
            value >>= 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                return bytes(out)

    dirs.model.write_bytes(b"\x08\x09" + b"\x12" + varint(2**40) + b"robustness" * 8)


def _text_format(dirs: CaseDirs) -> None:
    dirs.model.write_text(onnx.printer.to_text(models.mlp()))


_NAME = ("model.onnx",)

CASES = [
    Case("file-missing", "file", "error", _nothing, mentions=_NAME, api=True),
    Case("file-directory", "file", "error", _directory, mentions=_NAME, api=True),
    Case("file-empty", "file", "error", _write(b""), mentions=_NAME, api=True),
    Case("file-random-bytes", "file", "error", _random_bytes, mentions=_NAME, api=True),
    Case("file-truncated-protobuf", "file", "error", _truncated, mentions=_NAME, api=True),
    Case("file-text", "file", "error", _write(b"this is not an ONNX model, just text\n"), mentions=_NAME, api=True),
    Case(
        "file-onnx-text-format",
        "file",
        "error",
        _text_format,
        mentions=_NAME,
        api=True,
        note="the ONNX textual syntax (onnx.printer) in a .onnx file",
    ),
    Case("file-no-graph", "file", "error", _no_graph, mentions=_NAME, api=True),
    Case(
        "file-fifo",
        "file",
        "error",
        _fifo,
        mentions=_NAME,
        api=True,
        timeout=30,
        note="a named pipe nobody writes to: reading it would block forever",
    ),
    Case(
        "file-char-device",
        "file",
        "error",
        _nothing,
        argv=model_argv(model="/dev/null"),
        mentions=("/dev/null",),
        api=True,
        model_path="/dev/null",
    ),
    Case("file-unreadable", "file", "error", _unreadable, mentions=_NAME, restricted=True, api=True),
    Case("file-unicode-spaces-path", "file", "ok", _unicode_path, model_path="model/my models ü 模型/mödel ✓ v1.onnx"),
    Case("file-symlink", "file", "ok", _symlink),
    Case("file-symlink-loop", "file", "error", _symlink_loop, mentions=_NAME, api=True),
    Case("file-dangling-symlink", "file", "error", _dangling, mentions=_NAME, api=True),
    Case("file-gzip", "file", "error", _gzip, mentions=_NAME, api=True),
    Case("file-zip", "file", "error", _zip, mentions=_NAME, api=True),
    Case(
        "file-huge-declared-string",
        "file",
        "error",
        _huge_string,
        mentions=_NAME,
        api=True,
        note="producer_name declared 2**40 bytes long in an 80-byte file",
    ),
]
