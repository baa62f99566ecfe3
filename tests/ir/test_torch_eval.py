"""The torch evaluator of IR slices: whole Llama exports against ONNX Runtime, op semantics against NumPy,
overrides and value hooks, and a clear error for ops it does not know."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx import helper

from qcompile import runtime
from qcompile.frontends.onnx import load
from qcompile.ir.torch_eval import TorchEvaluator
from qcompile.testing.tiny_llama import VOCAB
from qcompile.zoo.lm_export import prefill_feeds


def _run(model: ir.Model, feeds: dict[str, np.ndarray], **hooks) -> list[np.ndarray]:
    evaluator = TorchEvaluator(list(model.graph), model.graph.inputs, model.functions, **hooks)
    with torch.no_grad():
        outs = evaluator.run([torch.from_numpy(feeds[v.name]) for v in model.graph.inputs], model.graph.outputs)
    return [t.numpy() for t in outs]


@pytest.mark.parametrize("shape", ["pow2", "paley"])
def test_a_whole_llama_export_matches_onnx_runtime(tiny_llama_export, shape: str) -> None:
    model = load(tiny_llama_export(shape))
    ids = np.random.default_rng(0).integers(0, VOCAB, (2, 9)).astype(np.int64)
    feeds = prefill_feeds(model, ids)
    expected = runtime.run(runtime.make_session(model), feeds)
    got = _run(model, feeds)
    for value, array in zip(model.graph.outputs, got):
        reference = expected[value.name]
        assert array.shape == reference.shape
        np.testing.assert_allclose(array, reference, rtol=0, atol=1e-5 * np.abs(reference).max() + 1e-7)


def _single_op_model(nodes, inputs, outputs, initializers=()) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def _tensor_info(name: str, dtype: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def test_shape_ops_match_onnx_runtime() -> None:
    """Slice with negative bounds and steps > 1, Gather with negative indices, Reshape with 0 and −1,
    Expand, Unsqueeze/Squeeze, Shape with start, Range, Where, Cast, ReduceMean with axes as an input."""
    F, I64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    const = [
        helper.make_tensor("starts", I64, [2], [-3, 0]),
        helper.make_tensor("ends", I64, [2], [np.iinfo(np.int64).max, 5]),
        helper.make_tensor("axes", I64, [2], [1, 2]),
        helper.make_tensor("steps", I64, [2], [1, 2]),
        helper.make_tensor("idx", I64, [2], [-1, 0]),
        helper.make_tensor("shape", I64, [3], [0, -1, 2]),
        helper.make_tensor("big", I64, [4], [3, 1, 1, 1]),
        helper.make_tensor("ax0", I64, [1], [0]),
        helper.make_tensor("ax_last", I64, [1], [-1]),
        helper.make_tensor("r0", I64, [], [1]),
        helper.make_tensor("r1", I64, [], [7]),
        helper.make_tensor("r2", I64, [], [2]),
    ]
    nodes = [
        helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["sliced"]),
        helper.make_node("Gather", ["x", "idx"], ["gathered"], axis=1),
        helper.make_node("Reshape", ["x", "shape"], ["reshaped"]),
        helper.make_node("Unsqueeze", ["x", "ax0"], ["unsq"]),
        helper.make_node("Expand", ["unsq", "big"], ["expanded"]),
        helper.make_node("Squeeze", ["unsq", "ax0"], ["squeezed"]),
        helper.make_node("Shape", ["x"], ["shape_tail"], start=1),
        helper.make_node("Range", ["r0", "r1", "r2"], ["range"]),
        helper.make_node("Greater", ["x", "squeezed"], ["never"]),
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("Reshape", ["reshaped", "x_shape"], ["reshaped_back"]),
        helper.make_node("Where", ["never", "x", "reshaped_back"], ["where"]),
        helper.make_node("Cast", ["range"], ["range_f"], to=F),
        helper.make_node("ReduceMean", ["x", "ax_last"], ["mean"], keepdims=0),
    ]
    outputs = ["sliced", "gathered", "reshaped", "expanded", "shape_tail", "range_f", "where", "mean"]
    model = _single_op_model(
        nodes,
        [_tensor_info("x", F, [2, 4, 6])],
        [helper.make_tensor_value_info(name, I64 if name == "shape_tail" else F, None) for name in outputs],
        const,
    )
    feeds = {"x": np.random.default_rng(1).normal(size=(2, 4, 6)).astype(np.float32)}
    expected = runtime.run(runtime.make_session(ir.serde.serialize_model(model)), feeds)
    for name, array in zip(outputs, _run(model, feeds)):
        np.testing.assert_allclose(array, expected[name], rtol=0, atol=1e-6, err_msg=name)


def test_overrides_and_value_hooks_replace_what_they_name() -> None:
    F = onnx.TensorProto.FLOAT
    w = np.arange(6, dtype=np.float32).reshape(3, 2)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"), helper.make_node("Relu", ["y"], ["z"])]
    model = _single_op_model(
        nodes, [_tensor_info("x", F, [1, 3])], [_tensor_info("z", F, [1, 2])], [onnx.numpy_helper.from_array(w, "w")]
    )
    x = np.array([[1.0, -2.0, 3.0]], dtype=np.float32)
    (plain,) = _run(model, {"x": x})
    np.testing.assert_allclose(plain, np.maximum(x @ w, 0))
    matmul = model.graph.node(0)
    (doubled,) = _run(model, {"x": x}, overrides={id(matmul): lambda node, args: [2 * (args[0] @ args[1])]})
    np.testing.assert_allclose(doubled, np.maximum(2 * (x @ w), 0))
    (hooked,) = _run(model, {"x": x}, value_hooks={id(model.graph.inputs[0]): torch.abs})
    np.testing.assert_allclose(hooked, np.abs(x) @ w)


def test_an_unknown_op_is_named() -> None:
    F = onnx.TensorProto.FLOAT
    model = _single_op_model(
        [helper.make_node("Hardmax", ["x"], ["y"])], [_tensor_info("x", F, [2])], [_tensor_info("y", F, [2])]
    )
    with pytest.raises(NotImplementedError, match="Hardmax"):
        _run(model, {"x": np.ones(2, np.float32)})
