"""Tests of the IR verifier: each invariant, broken on purpose in a small model, is reported by name."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.ir import quant_meta
from qcompile.ir.quant_meta import QuantSpec
from qcompile.ir.verifier import VerificationError, verify_model


def _float_value(name: str, shape: list[int]) -> ir.Value:
    return ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(shape))


def _model(inputs: list[ir.Value], outputs: list[ir.Value], nodes: list[ir.Node], initializers=()) -> ir.Model:
    graph = ir.Graph(inputs, outputs, nodes=nodes, initializers=list(initializers), opset_imports={"": 17})
    return ir.Model(graph, ir_version=9)


def _from_proto(nodes, inputs=("x",), outputs=("y",), initializers=()) -> ir.Model:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in outputs],
        list(initializers),
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _linear_model(weight_shape=(3, 4)) -> ir.Model:
    weight = numpy_helper.from_array(np.ones(weight_shape, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, weight_shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, weight_shape[1]])],
        [weight],
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_the_tiny_encoder_is_well_formed(tiny) -> None:
    verify_model(tiny.model)  # raises on any violation


def test_a_node_input_nothing_produces_is_reported_with_node_and_value() -> None:
    x = _float_value("x", [2, 3])
    ghost = _float_value("ghost", [2, 3])
    add = ir.node("Add", [x, ghost], name="adder")
    add.outputs[0].name = "y"
    add.outputs[0].dtype = ir.DataType.FLOAT
    model = _model([x], [add.outputs[0]], [add])

    with pytest.raises(VerificationError, match=r"node 'adder' \(Add\) input 1 'ghost' is not produced"):
        verify_model(model)


def test_a_missing_initializer_in_a_proto_is_reported_as_unproduced() -> None:
    model = _from_proto([helper.make_node("Add", ["x", "bias"], ["y"], name="add_bias")])
    with pytest.raises(VerificationError, match="'add_bias'.*'bias' is not produced"):
        verify_model(model)


def test_nodes_out_of_topological_order_are_reported() -> None:
    x = _float_value("x", [2, 3])
    first = ir.node("Neg", [x], name="first")
    first.outputs[0].name = "a"
    second = ir.node("Relu", [first.outputs[0]], name="second")
    second.outputs[0].name = "y"
    second.outputs[0].dtype = ir.DataType.FLOAT
    model = _model([x], [second.outputs[0]], [second, first])

    with pytest.raises(VerificationError, match=r"node 'second' \(Relu\) uses 'a' before it is produced.*topological"):
        verify_model(model)


def test_out_of_order_nodes_in_a_proto_are_reported() -> None:
    model = _from_proto(
        [
            helper.make_node("Relu", ["a"], ["y"], name="second"),
            helper.make_node("Neg", ["x"], ["a"], name="first"),
        ]
    )
    with pytest.raises(VerificationError, match="'second'.*before it is produced"):
        verify_model(model)


def test_two_node_outputs_with_one_name_are_reported() -> None:
    x = _float_value("x", [2, 3])
    first = ir.node("Neg", [x], name="first")
    second = ir.node("Relu", [x], name="second")
    first.outputs[0].name = second.outputs[0].name = "dup"
    add = ir.node("Add", [first.outputs[0], second.outputs[0]], name="add")
    add.outputs[0].name = "y"
    add.outputs[0].dtype = ir.DataType.FLOAT
    model = _model([x], [add.outputs[0]], [first, second, add])

    with pytest.raises(
        VerificationError, match=r"value name 'dup' defined twice \(node 'first' \(Neg\) and node 'second' \(Relu\)\)"
    ):
        verify_model(model)


def test_a_node_output_shadowing_a_graph_input_is_reported() -> None:
    x = _float_value("x", [2, 3])
    neg = ir.node("Neg", [x], name="neg")
    neg.outputs[0].name = "x"
    neg.outputs[0].dtype = ir.DataType.FLOAT
    model = _model([x], [neg.outputs[0]], [neg])
    with pytest.raises(VerificationError, match="'x' defined twice"):
        verify_model(model)


def test_an_unnamed_node_output_is_reported() -> None:
    x = _float_value("x", [2, 3])
    neg = ir.node("Neg", [x], name="neg")
    relu = ir.node("Relu", [neg.outputs[0]], name="relu")
    relu.outputs[0].name = "y"
    relu.outputs[0].dtype = ir.DataType.FLOAT
    model = _model([x], [relu.outputs[0]], [neg, relu])
    neg.outputs[0].name = None  # after construction: the graph names unnamed values when it adopts them
    with pytest.raises(VerificationError, match="'neg'.*unnamed output"):
        verify_model(model)


def test_a_graph_output_nothing_produces_is_reported() -> None:
    x = _float_value("x", [2, 3])
    neg = ir.node("Neg", [x], name="neg")
    neg.outputs[0].name = "y"
    neg.outputs[0].dtype = ir.DataType.FLOAT
    model = _model([x], [neg.outputs[0], _float_value("orphan", [2, 3])], [neg])
    with pytest.raises(VerificationError, match="graph output 'orphan' is not produced"):
        verify_model(model)


def test_a_graph_input_without_element_type_is_reported() -> None:
    x = ir.Value(name="x", shape=ir.Shape([2, 3]))
    neg = ir.node("Neg", [x], name="neg")
    neg.outputs[0].name = "y"
    neg.outputs[0].dtype = ir.DataType.FLOAT
    with pytest.raises(VerificationError, match="graph input 'x' has no element type"):
        verify_model(_model([x], [neg.outputs[0]], [neg]))


def test_a_graph_output_without_element_type_is_reported() -> None:
    x = _float_value("x", [2, 3])
    neg = ir.node("Neg", [x], name="neg")
    neg.outputs[0].name = "y"
    with pytest.raises(VerificationError, match="graph output 'y' has no element type"):
        verify_model(_model([x], [neg.outputs[0]], [neg]))


@pytest.mark.parametrize("axis", [2, -3, 5])
def test_a_per_channel_axis_outside_the_weight_rank_is_reported(axis: int) -> None:
    model = _linear_model()
    quant_meta.set_quant(
        model.graph.initializers["w"], QuantSpec(8, True, np.ones(4, np.float32), np.zeros(4, np.int32), axis=axis)
    )
    with pytest.raises(VerificationError, match=f"axis {axis} out of range for 'w' of rank 2"):
        verify_model(model)


@pytest.mark.parametrize(("axis", "scales"), [(1, 3), (0, 4), (-1, 5)])
def test_a_per_channel_scale_count_unlike_the_channel_count_is_reported(axis: int, scales: int) -> None:
    model = _linear_model((3, 4))
    spec = QuantSpec(8, True, np.ones(scales, np.float32), np.zeros(scales, np.int32), axis=axis)
    quant_meta.set_quant(model.graph.initializers["w"], spec)
    with pytest.raises(VerificationError, match=f"'w' has {scales} scales for"):
        verify_model(model)


@pytest.mark.parametrize(("axis", "scales"), [(1, 4), (0, 3), (-1, 4), (-2, 3)])
def test_a_per_channel_spec_matching_the_weight_passes(axis: int, scales: int) -> None:
    model = _linear_model((3, 4))
    spec = QuantSpec(8, True, np.ones(scales, np.float32), np.zeros(scales, np.int32), axis=axis)
    quant_meta.set_quant(model.graph.initializers["w"], spec)
    verify_model(model)


def test_a_per_channel_spec_on_an_activation_of_unknown_shape_is_reported() -> None:
    model = _linear_model()
    activation = model.graph.node("mm").outputs[0]
    activation.shape = None
    quant_meta.set_quant(activation, QuantSpec(8, True, np.ones(4, np.float32), np.zeros(4, np.int32), axis=1))
    with pytest.raises(VerificationError, match="'y' but its shape is unknown"):
        verify_model(model)
