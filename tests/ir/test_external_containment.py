"""Models loaded by other means than `qcompile.load` (here `onnx_ir.load`) keep the containment rule when
qcompile copies or serializes them: an external reference leading outside the model's folder is refused,
one inside is read into memory, and the copy never resolves a path against the working directory."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper

from qcompile.errors import InputError
from qcompile.ir import clone_model, model_to_bytes

WEIGHT = np.arange(64, dtype=np.float32).reshape(8, 8)


def _external_model(folder: Path, location: str) -> Path:
    """An 8x8 MatMul model whose weight is external data at `location` (the file is written as m.data)."""
    folder.mkdir(parents=True, exist_ok=True)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["b", 8])],
        [numpy_helper.from_array(WEIGHT, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(folder / "m.onnx"), save_as_external_data=True, location="m.data", size_threshold=0)
    proto = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    proto.graph.initializer[0].external_data[0].value = location
    onnx.save(proto, str(folder / "m.onnx"))
    return folder / "m.onnx"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "secret.bin"
    path.parent.mkdir()
    path.write_bytes(np.full(64, 4242.0, dtype=np.float32).tobytes())
    return path


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_clone_refuses_an_external_reference_leading_outside(
    tmp_path: Path, secret: Path, kind: str, monkeypatch
) -> None:
    folder = tmp_path / "model"
    location = {"dotdot": "../outside/secret.bin", "absolute": str(secret), "symlink": "link.bin"}[kind]
    path = _external_model(folder, location)
    if kind == "symlink":
        os.symlink(secret, folder / "link.bin")
    monkeypatch.chdir(folder)
    model = ir.load(str(path))

    for copy in (clone_model, model_to_bytes):
        with pytest.raises(InputError) as caught:
            copy(model)
        message = str(caught.value)
        assert "tensor 'w'" in message and "4242" not in message and str(secret.stat().st_size) not in message


def test_clone_reads_a_contained_reference_into_memory_from_any_working_directory(tmp_path: Path, monkeypatch) -> None:
    path = _external_model(tmp_path / "model", "m.data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "m.data").write_bytes(np.zeros(64, dtype=np.float32).tobytes())  # a decoy of the same name
    model = ir.load(str(path))
    monkeypatch.chdir(elsewhere)

    copy = clone_model(model)

    np.testing.assert_array_equal(copy.graph.initializers["w"].const_value.numpy(), WEIGHT)
    assert not isinstance(copy.graph.initializers["w"].const_value, ir.ExternalTensor)
