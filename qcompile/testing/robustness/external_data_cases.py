"""Cases of category `external-data`: initializers stored outside the model file, pointing somewhere
they must not (outside the model's folder: security cases with a planted secret), or described by
malformed entries (offset, length, location)."""

from __future__ import annotations

import os

import onnx
from onnx import TensorProto

from qcompile.testing.robustness import models
from qcompile.testing.robustness.case import SECRET_SIZE, Case, CaseDirs, save

__all__ = ["CASES", "externalize"]

_DATA_SIZE = 7331  # the data file's size in the bounds case: the message must not reveal it


def externalize(
    proto: onnx.ModelProto, folder: os.PathLike, location: str = "weights.bin", pad_to: int = 0
) -> dict[str, tuple[int, int]]:
    """Move every initializer's bytes into `folder/location` (one file, 64-byte aligned) and point the
    tensors at it; returns {name: (offset, length)}. `pad_to` pads the file to that size."""
    blob = bytearray()
    spans = {}
    for tensor in proto.graph.initializer:
        data = onnx.numpy_helper.to_array(tensor).tobytes()
        blob += b"\0" * (-len(blob) % 64)
        spans[tensor.name] = (len(blob), len(data))
        blob += data
        _point(tensor, location, len(blob) - len(data), len(data))
    if pad_to:
        blob += b"\0" * (pad_to - len(blob))
    path = os.path.join(folder, location)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(blob)
    return spans


def _point(tensor: TensorProto, location: str, offset: int | str | None, length: int | str | None) -> None:
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        if value is not None:
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)


def _w1(proto: onnx.ModelProto) -> TensorProto:
    return next(t for t in proto.graph.initializer if t.name == "w1")


def _with_w1(location, offset=0, length=1024, before=None, pad_to: int = 0):
    """The MLP with its weights in weights.bin, except w1 which points at `location` (a string, or a
    function of the case folders) with the given offset and length; `before(dirs)` runs first."""

    def build(dirs: CaseDirs) -> None:
        if before is not None:
            before(dirs)
        proto = models.mlp()
        externalize(proto, dirs.model_dir, pad_to=pad_to)
        where = location(dirs) if callable(location) else location
        _point(_w1(proto), where, offset, length)
        save(proto, dirs.model)

    return build


def _symlink_to_secret(dirs: CaseDirs) -> None:
    os.symlink(os.path.relpath(dirs.secret.path, dirs.model_dir), dirs.model_dir / "linked.bin")


def _symlinked_folder(dirs: CaseDirs) -> None:
    os.symlink(os.path.relpath(dirs.outside, dirs.model_dir), dirs.model_dir / "shared")


def _data_dir(dirs: CaseDirs) -> None:
    (dirs.model_dir / "weights.d").mkdir()


def _fifo(dirs: CaseDirs) -> None:
    os.mkfifo(dirs.model_dir / "pipe.bin")


def _self_reference(dirs: CaseDirs) -> None:
    # b1 (64 bytes) read from the model file itself, inside its bounds
    proto = models.mlp()
    externalize(proto, dirs.model_dir)
    b1 = next(t for t in proto.graph.initializer if t.name == "b1")
    _point(b1, "model.onnx", 0, 64)
    save(proto, dirs.model)


_SIZE = (str(SECRET_SIZE),)
_W1 = ("w1",)

CASES = [
    Case(
        "ext-parent-escape",
        "external-data",
        "error",
        _with_w1("../outside/secret.bin"),
        mentions=_W1,
        forbid=_SIZE,
        secret=True,
        api=True,
    ),
    Case(
        "ext-parent-escape-via-subfolder",
        "external-data",
        "error",
        _with_w1("sub/../../outside/secret.bin"),
        mentions=_W1,
        forbid=_SIZE,
        secret=True,
        api=True,
    ),
    Case(
        "ext-absolute-path",
        "external-data",
        "error",
        _with_w1(lambda d: str(d.secret.path)),
        mentions=_W1,
        forbid=_SIZE,
        secret=True,
        api=True,
    ),
    Case(
        "ext-symlink-to-outside",
        "external-data",
        "error",
        _with_w1("linked.bin", before=_symlink_to_secret),
        mentions=_W1,
        forbid=_SIZE,
        secret=True,
        api=True,
        note="model/linked.bin → ../outside/secret.bin",
    ),
    Case(
        "ext-symlinked-folder-to-outside",
        "external-data",
        "error",
        _with_w1("shared/secret.bin", before=_symlinked_folder),
        mentions=_W1,
        forbid=_SIZE,
        secret=True,
        api=True,
        note="model/shared → ../outside",
    ),
    Case(
        "ext-location-directory",
        "external-data",
        "error",
        _with_w1("weights.d", before=_data_dir),
        mentions=(("w1", "weights.d"),),
        api=True,
    ),
    Case(
        "ext-missing-file",
        "external-data",
        "error",
        _with_w1("missing.bin"),
        mentions=(("w1", "missing.bin"),),
        api=True,
    ),
    Case(
        "ext-offset-not-a-number",
        "external-data",
        "error",
        _with_w1("weights.bin", offset="abc"),
        mentions=_W1,
        api=True,
    ),
    Case("ext-negative-offset", "external-data", "error", _with_w1("weights.bin", offset=-64), mentions=_W1, api=True),
    Case("ext-negative-length", "external-data", "error", _with_w1("weights.bin", length=-4), mentions=_W1, api=True),
    Case(
        "ext-beyond-end",
        "external-data",
        "error",
        _with_w1("weights.bin", offset=7000, pad_to=_DATA_SIZE),
        mentions=_W1,
        forbid=(str(_DATA_SIZE),),
        api=True,
        note="offset+length past the end of a 7331-byte file",
    ),
    Case(
        "ext-length-mismatch",
        "external-data",
        "error",
        _with_w1("weights.bin", length=100),
        mentions=_W1,
        api=True,
        note="length 100 for a 16×16 float tensor (1024 bytes)",
    ),
    Case("ext-location-nul", "external-data", "error", _with_w1("weights.bin\0.txt"), mentions=_W1, api=True),
    Case("ext-location-empty", "external-data", "error", _with_w1(""), mentions=_W1, api=True),
    Case(
        "ext-location-is-model",
        "external-data",
        "error",
        _self_reference,
        mentions=("b1",),
        api=True,
        note="b1's location is model.onnx itself (in bounds)",
    ),
    Case(
        "ext-location-fifo",
        "external-data",
        "error",
        _with_w1("pipe.bin", before=_fifo),
        mentions=(("w1", "pipe.bin"),),
        api=True,
        timeout=30,
    ),
]
