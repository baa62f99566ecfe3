"""Tests of `qcompile.load`: valid models load as `ir.Model`s; every malformed input is an `InputError`
whose one-line message names the file and, where there is one, the node and op."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompile
from qcompile.errors import InputError
from qcompile.testing.builders import tiny_encoder_proto


def _save(proto: onnx.ModelProto, path: Path) -> Path:
    onnx.save(proto, str(path))
    return path


def _single_node_proto(
    op_type: str, inputs: list[str], initializers=(), domain: str = "", node_name: str = "the_node"
) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node(op_type, inputs, ["y"], name=node_name, domain=domain)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
        list(initializers),
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets)


def test_a_valid_model_loads_as_an_ir_model_with_every_node(tmp_path: Path) -> None:
    proto = tiny_encoder_proto()
    model = qcompile.load(_save(proto, tmp_path / "tiny.onnx"))

    assert isinstance(model, ir.Model)
    assert len(model.graph) == len(proto.graph.node)
    assert [n.name for n in model.graph] == [n.name for n in proto.graph.node]
    assert sorted(model.graph.initializers) == sorted(t.name for t in proto.graph.initializer)


def test_a_string_path_loads_too(tmp_path: Path) -> None:
    model = qcompile.load(str(_save(tiny_encoder_proto(), tmp_path / "tiny.onnx")))
    assert len(model.graph) == len(tiny_encoder_proto().graph.node)


def test_external_data_loads_with_the_right_initializer_values(tmp_path: Path) -> None:
    proto = tiny_encoder_proto()
    expected = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    onnx.save(
        proto,
        str(tmp_path / "m.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="m.data",
        size_threshold=0,
    )
    assert (tmp_path / "m.data").stat().st_size > 0

    model = qcompile.load(tmp_path / "m.onnx")

    assert sorted(model.graph.initializers) == sorted(expected)
    for name, value in model.graph.initializers.items():
        np.testing.assert_array_equal(value.const_value.numpy(), expected[name], err_msg=name)


def test_missing_external_data_file_is_an_input_error_naming_the_file(tmp_path: Path) -> None:
    onnx.save(
        tiny_encoder_proto(),
        str(tmp_path / "m.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    (tmp_path / "weights.bin").unlink()

    with pytest.raises(
        InputError, match=r"m\.onnx: tensor '.+': external data file 'weights\.bin' not found in the model's folder"
    ):
        qcompile.load(tmp_path / "m.onnx")


def test_truncated_external_data_file_is_an_input_error_naming_the_file(tmp_path: Path) -> None:
    onnx.save(
        tiny_encoder_proto(),
        str(tmp_path / "m.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    data = (tmp_path / "weights.bin").read_bytes()
    (tmp_path / "weights.bin").write_bytes(data[: len(data) // 2])

    with pytest.raises(
        InputError, match=r"m\.onnx: tensor '.+': external data bytes \d+\.\.\d+ lie past the end of 'weights\.bin'"
    ):
        qcompile.load(tmp_path / "m.onnx")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.999])
def test_truncated_file_is_an_input_error_naming_the_file(tmp_path: Path, fraction: float) -> None:
    data = tiny_encoder_proto().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: int(len(data) * fraction)])

    with pytest.raises(InputError, match=r"cut\.onnx: not a valid ONNX file"):
        qcompile.load(path)


def test_every_truncation_of_a_model_is_an_input_error(tmp_path: Path) -> None:
    data = tiny_encoder_proto().SerializeToString()
    path = tmp_path / "cut.onnx"
    for cut in range(0, len(data), 97):
        path.write_bytes(data[:cut])
        with pytest.raises(InputError, match=r"cut\.onnx: "):
            qcompile.load(path)


def test_unknown_op_is_an_input_error_naming_node_and_op(tmp_path: Path) -> None:
    path = _save(_single_node_proto("FrobnicateV2", ["x"], node_name="frob"), tmp_path / "unknown.onnx")
    with pytest.raises(InputError, match=r"unknown\.onnx: node 'frob' uses unknown op 'FrobnicateV2' \(opset 17\)"):
        qcompile.load(path)


def test_op_newer_than_the_opset_is_an_input_error(tmp_path: Path) -> None:
    proto = _single_node_proto("Gelu", ["x"], node_name="gelu")  # Gelu appeared in opset 20
    path = _save(proto, tmp_path / "old_opset.onnx")
    with pytest.raises(InputError, match=r"node 'gelu' uses unknown op 'Gelu' \(opset 17\)"):
        qcompile.load(path)


def test_op_of_an_unknown_domain_is_an_input_error_naming_the_domain(tmp_path: Path) -> None:
    path = _save(_single_node_proto("Thing", ["x"], domain="com.example", node_name="thing"), tmp_path / "domain.onnx")
    with pytest.raises(InputError, match=r"node 'thing' uses op 'Thing' of unknown domain 'com\.example'"):
        qcompile.load(path)


def test_missing_initializer_is_an_input_error_naming_node_and_value(tmp_path: Path) -> None:
    path = _save(_single_node_proto("MatMul", ["x", "weight"], node_name="mm"), tmp_path / "missing.onnx")
    with pytest.raises(InputError, match=r"missing\.onnx: node 'mm' \(MatMul\) reads 'weight'.*missing initializer"):
        qcompile.load(path)


def test_missing_initializer_logs_no_warning_besides_the_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _save(_single_node_proto("MatMul", ["x", "weight"], node_name="mm"), tmp_path / "missing.onnx")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(InputError):
        qcompile.load(path)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_removing_an_initializer_from_the_tiny_encoder_names_its_reader(tmp_path: Path) -> None:
    proto = tiny_encoder_proto()
    kept = [t for t in proto.graph.initializer if t.name != "fc1.weight"]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    path = _save(proto, tmp_path / "no_fc1.onnx")
    with pytest.raises(InputError, match=r"node 'fc1/MatMul' \(MatMul\) reads 'fc1\.weight'"):
        qcompile.load(path)


def test_an_unproduced_graph_output_is_an_input_error(tmp_path: Path) -> None:
    proto = _single_node_proto("Relu", ["x"])
    proto.graph.output.append(helper.make_tensor_value_info("nowhere", TensorProto.FLOAT, [2, 2]))
    with pytest.raises(InputError, match="graph output 'nowhere' is never produced"):
        qcompile.load(_save(proto, tmp_path / "out.onnx"))


def test_a_text_file_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("this is a text file, not a model\n")
    with pytest.raises(InputError, match=r"notes\.onnx: not a valid ONNX file"):
        qcompile.load(path)


def test_a_png_like_binary_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "picture.onnx"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match=r"picture\.onnx: not a valid ONNX file"):
        qcompile.load(path)


def test_an_empty_file_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.onnx: not an ONNX model"):
        qcompile.load(path)


def test_a_proto_without_nodes_is_an_input_error(tmp_path: Path) -> None:
    proto = helper.make_model(helper.make_graph([], "g", [], []), opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(InputError, match=r"nodes\.onnx: not an ONNX model"):
        qcompile.load(_save(proto, tmp_path / "nodes.onnx"))


def test_a_directory_is_an_input_error(tmp_path: Path) -> None:
    folder = tmp_path / "model.onnx"
    folder.mkdir()
    with pytest.raises(InputError, match=r"model\.onnx: is a directory"):
        qcompile.load(folder)


def test_a_nonexistent_path_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"absent\.onnx: no such file"):
        qcompile.load(tmp_path / "absent.onnx")


@pytest.mark.parametrize("kind", ["truncated", "text", "empty", "unknown_op", "missing_initializer"])
def test_input_error_messages_are_one_line(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.onnx"
    if kind == "truncated":
        path.write_bytes(tiny_encoder_proto().SerializeToString()[:1000])
    elif kind == "text":
        path.write_text("a\nb\nc\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "unknown_op":
        _save(_single_node_proto("Nope", ["x"]), path)
    else:
        _save(_single_node_proto("Add", ["x", "b"]), path)
    with pytest.raises(InputError) as info:
        qcompile.load(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
