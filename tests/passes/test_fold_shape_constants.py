"""Folding float values that depend on the input only through its static shape."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from qcompile import runtime
from qcompile.passes.lowering.fold_shape_constants import fold_shape_constants


def _model() -> ir.Model:
    """y = x + grid·(W/4) where W is read from Shape(x) (static 8) and cast to float — a legacy position
    grid; plus an Expand of a constant to the (dynamic) batch, which must not be folded."""
    inits = [
        numpy_helper.from_array(np.arange(8, dtype=np.float32), "grid"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array(4.0, np.float32), "four"),
        numpy_helper.from_array(np.ones((1, 8), np.float32), "row"),
    ]
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["width"], axis=0),
        helper.make_node("Cast", ["width"], ["width_f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["width_f", "four"], ["ratio"]),
        helper.make_node("Mul", ["grid", "ratio"], ["scaled_grid"]),
        helper.make_node("Add", ["x", "scaled_grid"], ["y"]),
        helper.make_node("Shape", ["x"], ["shape2"]),
        helper.make_node("Expand", ["row", "shape2"], ["rows"]),
        helper.make_node("Add", ["y", "rows"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fold",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 8])],
        inits,
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def test_shape_only_float_values_fold_and_batch_dependent_ones_stay() -> None:
    model = _model()
    ir.passes.common.ShapeInferencePass()(model)
    x = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    before = runtime.run(runtime.make_session(model), {"x": x})["z"]
    folded = fold_shape_constants(model)
    assert folded == ["scaled_grid"]
    ops = [n.op_type for n in model.graph]
    assert "Cast" not in ops and "Div" not in ops and "Expand" in ops
    np.testing.assert_array_equal(
        model.graph.initializers["scaled_grid_folded"].const_value.numpy(), np.arange(8) * 2.0
    )
    np.testing.assert_array_equal(runtime.run(runtime.make_session(model), {"x": x})["z"], before)
    assert fold_shape_constants(model) == []  # a second run finds nothing left
