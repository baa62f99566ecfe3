"""The `intonly` rule table and canonicalization, TVM style: a small Before graph, the rule or pass run on
it, and the result compared structurally (op types, connectivity, attributes, constants) to an Expected
node list built by hand. Plus the error that names, per rule that looked at a node, why it did not apply."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper

import qcompile
from qcompile import PipelineContext, runtime
from qcompile.errors import InputError
from qcompile.intops.reference import run_reference
from qcompile.ir import quant_meta
from qcompile.passes.lowering.canonicalize import canonicalize
from qcompile.passes.lowering.int_value import IntValue
from qcompile.passes.lowering.intonly import IntOnlyPass, _Lowering, float_values
from qcompile.passes.lowering.mask_rule import PENALTY
from qcompile.passes.lowering.ranges import Ranges
from qcompile.passes.lowering.rule_base import LoweringError, lower_with
from qcompile.passes.lowering.rule_table import RULES
from qcompile.pipeline.context import CalibrationData
from qcompile.testing.builders import tiny_encoder_proto, tiny_inputs

F32, I32, I64, BOOL = ir.DataType.FLOAT, ir.DataType.INT32, ir.DataType.INT64, ir.DataType.BOOL


def _structure(nodes: list[ir.Node], leaves: dict[int, str]) -> list[tuple]:
    """Per node in order: (domain, op, attributes, inputs, output dtypes). An input is ("leaf", name) for a
    value in `leaves`, ("node", i, k) for output k of the i-th node, ("const", dtype, values) for a
    constant."""
    produced: dict[int, tuple[int, int]] = {}
    out = []
    for index, node in enumerate(nodes):
        inputs = []
        for value in node.inputs:
            if value is None:
                inputs.append(None)
            elif id(value) in leaves:
                inputs.append(("leaf", leaves[id(value)]))
            elif id(value) in produced:
                inputs.append(("node", *produced[id(value)]))
            elif value.const_value is not None:
                array = value.const_value.numpy()
                inputs.append(("const", str(array.dtype), array.tolist()))
            else:
                raise AssertionError(f"input '{value.name}' of {node.op_type} comes from outside the compared nodes")
        attributes = {
            key: list(attr.value) if isinstance(attr.value, (list, tuple)) else attr.value
            for key, attr in node.attributes.items()
        }
        out.append((node.domain, node.op_type, attributes, tuple(inputs), tuple(o.dtype for o in node.outputs)))
        produced.update({id(o): (index, k) for k, o in enumerate(node.outputs)})
    return out


def _value(name: str, dtype: ir.DataType, shape: list) -> ir.Value:
    return ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(shape))


def _const(array) -> ir.Value:
    array = np.asarray(array)
    value = ir.Value(name=f"c{id(array)}", const_value=ir.tensor(array))
    value.dtype, value.shape = ir.DataType.from_numpy(array.dtype), ir.Shape(array.shape)
    return value


def _model(inputs: list[ir.Value], nodes: list[ir.Node], outputs: list[ir.Value]) -> ir.Model:
    graph = ir.Graph(inputs, outputs, nodes=nodes, opset_imports={"": 18})
    for node in nodes:
        for value in node.inputs:
            if value is not None and value.const_value is not None and value.name not in graph.initializers:
                graph.register_initializer(value)
    return ir.Model(graph, ir_version=10)


def _lowering(model: ir.Model) -> _Lowering:
    return _Lowering(model, Ranges({}), "ibert", 16, "table", {"softmax": {}, "gelu": {}})


def test_masked_scores_become_scores_plus_an_integer_where_penalty() -> None:
    # Before: Add(scores, (1 − m)·(−10000)) → Softmax, both operands already integer forms
    scores, mask = _value("scores", F32, ["b", 2, "t", "t"]), _value("mask", F32, ["b", 1, 1, "t"])
    scores_q, mask_q = _value("scores_q", I32, ["b", 2, "t", "t"]), _value("mask_q", I64, ["b", 1, 1, "t"])
    add = ir.node("Add", [scores, mask], name="masked")
    add.outputs[0].dtype = F32
    softmax = ir.node("Softmax", [add.outputs[0]], attributes={"axis": -1}, name="softmax")
    lowering = _lowering(_model([scores, mask], [add, softmax], softmax.outputs))
    lowering.ints[id(scores)] = IntValue(scores_q, np.float64(0.01), 0, -1000, 1000)
    lowering.ints[id(mask)] = IntValue(mask_q, np.float64(10000.0), 0, 0, 1, np.float64(-10000.0))

    assert lower_with(RULES, lowering, add) == "MaskedScoresIntoWherePenalty"

    cast = ir.node("Cast", [mask_q], attributes={"to": int(I32)})
    kept = ir.node("Equal", [cast.outputs[0], _const(np.int32(1))])
    penalty = ir.node("Where", [kept.outputs[0], _const(np.int32(0)), _const(np.int32(PENALTY))])
    masked = ir.node("Add", [scores_q, penalty.outputs[0]])
    for node, dtype in ((cast, I32), (kept, BOOL), (penalty, I32), (masked, I32)):
        node.outputs[0].dtype = dtype
    leaves = {id(scores_q): "scores_q", id(mask_q): "mask_q"}
    assert _structure(lowering.emit.nodes, leaves) == _structure([cast, kept, penalty, masked], leaves)
    result = lowering.ints[id(add.outputs[0])]
    assert result.value is lowering.emit.nodes[-1].outputs[0] and float(result.scale) == 0.01
    assert (result.lo, result.hi) == (PENALTY - 1000, 1000)


def test_a_where_built_mask_is_an_affine_form_of_its_condition_and_lowers_to_the_same_penalty() -> None:
    # Before: Where(allowed, 0, finfo.min) (transformers' mask functions) → Add(scores, ·) → Softmax
    allowed, scores = _value("allowed", BOOL, ["b", 1, 1, "t"]), _value("scores", F32, ["b", 2, "t", "t"])
    scores_q = _value("scores_q", I32, ["b", 2, "t", "t"])
    minimum = float(np.finfo(np.float32).min)
    where = ir.node("Where", [allowed, _const(np.float32(0.0)), _const(np.float32(minimum))], name="mask")
    add = ir.node("Add", [scores, where.outputs[0]], name="masked")
    softmax = ir.node("Softmax", [add.outputs[0]], attributes={"axis": -1})
    for node in (where, add, softmax):
        node.outputs[0].dtype = F32
    lowering = _lowering(_model([allowed, scores], [where, add, softmax], softmax.outputs))
    lowering.ints[id(scores)] = IntValue(scores_q, np.float64(0.01), 0, -1000, 1000)

    assert lower_with(RULES, lowering, where) == "SelectIntoScaleOffset"
    assert lowering.emit.nodes == []  # scale and offset bookkeeping only
    mask = lowering.ints[id(where.outputs[0])]
    assert mask.value is allowed and float(mask.scale) == -minimum and float(mask.offset) == minimum
    assert (mask.lo, mask.hi) == (0, 1)
    assert lower_with(RULES, lowering, add) == "MaskedScoresIntoWherePenalty"

    cast = ir.node("Cast", [allowed], attributes={"to": int(I32)})
    kept = ir.node("Equal", [cast.outputs[0], _const(np.int32(1))])
    penalty = ir.node("Where", [kept.outputs[0], _const(np.int32(0)), _const(np.int32(PENALTY))])
    masked = ir.node("Add", [scores_q, penalty.outputs[0]])
    for node, dtype in ((cast, I32), (kept, BOOL), (penalty, I32), (masked, I32)):
        node.outputs[0].dtype = dtype
    leaves = {id(scores_q): "scores_q", id(allowed): "allowed"}
    assert _structure(lowering.emit.nodes, leaves) == _structure([cast, kept, penalty, masked], leaves)


def test_integer_nodes_are_kept_as_they_are() -> None:
    # Before: GatherElements/Equal/GreaterOrEqual/And on the int64 mask (the mask chain of a TorchScript export)
    mask, index = _value("mask", I64, ["b", "t"]), _value("kv", I64, ["b", "t"])
    gathered = ir.node("GatherElements", [mask, index], attributes={"axis": 1})
    equal = ir.node("Equal", [gathered.outputs[0], _const(np.int64(1))])
    nonnegative = ir.node("GreaterOrEqual", [index, _const(np.int64(0))])
    both = ir.node("And", [equal.outputs[0], nonnegative.outputs[0]])
    nodes = [gathered, equal, nonnegative, both]
    for node, dtype in zip(nodes, (I64, BOOL, BOOL, BOOL)):
        node.outputs[0].dtype = dtype
    lowering = _lowering(_model([mask, index], nodes, both.outputs))
    assert [lower_with(RULES, lowering, n) for n in nodes] == ["IntegerNodeKept"] * 4
    assert lowering.emit.nodes == nodes and lowering.ints == {}  # the same nodes, unchanged, in order


def test_data_movement_moves_codes_with_the_same_attributes() -> None:
    x, codes = _value("x", F32, ["b", 4, 8]), _value("x_q", ir.DataType.INT8, ["b", 4, 8])
    transpose = ir.node("Transpose", [x], attributes={"perm": [0, 2, 1]}, name="t")
    transpose.outputs[0].dtype = F32
    lowering = _lowering(_model([x], [transpose], transpose.outputs))
    lowering.ints[id(x)] = IntValue(codes, np.float64(0.5), 3, -128, 127)

    assert lower_with(RULES, lowering, transpose) == "DataMovementOnCodes"

    expected = ir.node("Transpose", [codes], attributes={"perm": [0, 2, 1]})
    expected.outputs[0].dtype = ir.DataType.INT8
    assert _structure(lowering.emit.nodes, {id(codes): "x_q"}) == _structure([expected], {id(codes): "x_q"})
    moved = lowering.ints[id(transpose.outputs[0])]
    assert (float(moved.scale), moved.zero_point, moved.lo, moved.hi) == (0.5, 3, -128, 127)


def test_a_node_no_rule_applies_to_is_named_with_each_rules_reason() -> None:
    x, y = _value("x", F32, ["b", 8]), _value("y", F32, ["b", 8])
    allowed = _value("allowed", BOOL, ["b", 8])
    greater = ir.node("Greater", [x, y], name="compare")
    greater.outputs[0].dtype = BOOL
    where = ir.node("Where", [allowed, x, _const(np.float32(0.0))], name="/Where_1")
    where.outputs[0].dtype = F32
    relu = ir.node("Relu", [x], name="act")
    relu.outputs[0].dtype = F32
    lowering = _lowering(_model([x, y, allowed], [greater, where, relu], [greater.outputs[0], where.outputs[0]]))
    lowering.ints[id(x)] = IntValue(_value("x_q", ir.DataType.INT8, ["b", 8]), np.float64(0.1), 0, -127, 127)

    with pytest.raises(LoweringError) as error:
        lower_with(RULES, lowering, greater)
    assert error.value.reasons == {"IntegerNodeKept": "reads float tensor 'x'"}
    assert "cannot lower node 'compare' (Greater)" in str(error.value)
    with pytest.raises(LoweringError, match=r"'/Where_1' \(Where\).*SelectIntoScaleOffset: the two branches") as error:
        lower_with(RULES, lowering, where)
    assert set(error.value.reasons) == {"SelectIntoScaleOffset"}
    with pytest.raises(InputError, match=r"cannot lower node 'act' \(Relu\): no integer rule for this op"):
        lower_with(RULES, lowering, relu)


# --- canonicalization --------------------------------------------------------------------------------


def _unhalved_gelu() -> tuple[ir.Model, quant_meta.QuantSpec]:
    """x → x·(1 + erf(x/√2)) → MatMul(W), the GELU's ×0.5 folded into W, a QuantSpec on the product."""
    x = _value("x", F32, ["b", 4])
    scaled = ir.node("Div", [x, _const(np.float32(math.sqrt(2.0)))], name="gelu/Div")
    erf = ir.node("Erf", [scaled.outputs[0]], name="gelu/Erf")
    add = ir.node("Add", [erf.outputs[0], _const(np.float32(1.0))], name="gelu/Add")
    product = ir.node("Mul", [x, add.outputs[0]], name="gelu/Mul")
    matmul = ir.node("MatMul", [product.outputs[0], _const(np.full((4, 3), 0.25, np.float32))], name="fc2")
    nodes = [scaled, erf, add, product, matmul]
    for node in nodes:
        node.outputs[0].dtype = F32
    product.outputs[0].name = "doubled"
    spec = quant_meta.QuantSpec(bits=8, signed=False, scale=np.asarray(0.02), zero_point=np.asarray(10))
    quant_meta.set_quant(product.outputs[0], spec)
    return _model([x], nodes, matmul.outputs), spec


def test_an_unhalved_gelu_is_canonicalized_to_gelu_times_two() -> None:
    model, spec = _unhalved_gelu()
    (x,) = model.graph.inputs
    doubled = model.graph.node("gelu/Mul").outputs[0]

    assert canonicalize(model) == {"UnhalvedGeluIntoGelu": 1}

    scaled = ir.node("Div", [x, _const(np.float32(math.sqrt(2.0)))])
    erf = ir.node("Erf", [scaled.outputs[0]])
    add = ir.node("Add", [erf.outputs[0], _const(np.float32(1.0))])
    product = ir.node("Mul", [x, add.outputs[0]])
    half = ir.node("Mul", [product.outputs[0], _const(np.float32(0.5))])
    twice = ir.node("Mul", [half.outputs[0], _const(np.float32(2.0))])
    matmul = ir.node("MatMul", [twice.outputs[0], _const(np.full((4, 3), 0.25, np.float32))])
    expected = [scaled, erf, add, product, half, twice, matmul]
    for node in expected:
        node.outputs[0].dtype = F32
    assert _structure(list(model.graph), {id(x): "x"}) == _structure(expected, {id(x): "x"})
    # the next linear's quantizer moves to the ×2 output; the GELU gets the same codes at half the scale
    gelu, out = model.graph[4].outputs[0], model.graph[5].outputs[0]
    assert quant_meta.get_quant(doubled) is None and quant_meta.get_quant(out) == spec
    assert (
        float(quant_meta.get_quant(gelu).scale) == float(spec.scale) / 2
        and int(quant_meta.get_quant(gelu).zero_point) == 10
    )
    assert canonicalize(model) == {}  # a second run finds nothing


def test_canonicalization_leaves_a_gelu_and_a_foreign_product_alone() -> None:
    model, _ = _unhalved_gelu()
    canonicalize(model)
    before = _structure(list(model.graph), {id(model.graph.inputs[0]): "x"})
    assert canonicalize(model) == {} and _structure(list(model.graph), {id(model.graph.inputs[0]): "x"}) == before
    model, _ = _unhalved_gelu()
    model.graph.node("gelu/Div").replace_input_with(1, _const(np.float32(2.0)))  # erf(x/2): not a GELU
    model.graph.register_initializer(model.graph.node("gelu/Div").inputs[1])
    assert canonicalize(model) == {}


def test_an_unhalved_gelu_that_is_a_graph_output_keeps_the_output_name() -> None:
    model, _ = _unhalved_gelu()
    model.graph.outputs[0] = model.graph.node("gelu/Mul").outputs[0]
    model.graph.remove(model.graph.node("fc2"), safe=True)
    canonicalize(model)
    (output,) = model.graph.outputs
    assert output.name == "doubled" and [n.op_type for n in model.graph][-2:] == ["Mul", "Mul"]
    assert output.producer() is model.graph[-1] and float(output.producer().inputs[1].const_value.numpy()) == 2.0


def _folded_half_proto() -> onnx.ModelProto:
    """The tiny encoder with GELU's ×0.5 folded into FC2's weight, as graph optimizers write it."""
    proto = tiny_encoder_proto()
    (half,) = [n for n in proto.graph.node if n.name == "gelu/Half"]
    proto.graph.node.remove(half)
    for node in proto.graph.node:
        node.input[:] = [half.input[0] if name == half.output[0] else name for name in node.input]
    for index, tensor in enumerate(proto.graph.initializer):
        if tensor.name == "fc2.weight":
            proto.graph.initializer[index].CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(tensor) * 0.5, tensor.name)
            )
    return proto


def test_a_gelu_with_its_half_folded_into_the_next_weight_lowers_like_the_unfolded_one() -> None:
    calibration = tiny_inputs(4)
    (feeds,) = tiny_inputs(1, seed=7)
    outputs = {}
    for label, proto in (("folded", _folded_half_proto()), ("plain", tiny_encoder_proto())):
        model = ir.serde.deserialize_model(proto)
        context = PipelineContext(calibration=CalibrationData.from_list(calibration), progress=False)
        qcompile.run_passes(model, "w8a8", context=context)
        stats = IntOnlyPass(context=context)(model).stats
        assert float_values(model) == [] and "Lookup" in {n.op_type for n in model.graph}
        assert stats["canonicalized"] == ({"UnhalvedGeluIntoGelu": 1} if label == "folded" else {})
        outputs[label] = runtime.run(runtime.make_session(model), feeds)["y"]
        np.testing.assert_array_equal(run_reference(ir.serde.serialize_model(model), feeds)["y"], outputs[label])
    # ×0.5 and W/2 are exact in float32, so calibration, quantizers and every integer are the same
    np.testing.assert_array_equal(outputs["folded"], outputs["plain"])


def test_per_group_weights_are_refused_with_the_linear_rules_reason(tmp_path) -> None:
    from qcompile import zoo
    from qcompile.errors import InputError
    from qcompile.pipeline.run import run_passes

    entry = zoo.get("tiny")
    model = entry.load()
    run_passes(model, "calibrate,quantize:weight_group=16", calibration=entry.calibration(8, 0))
    with pytest.raises(InputError, match="is quantized per group: IntLinear takes per-channel weights"):
        run_passes(model, "intonly", calibration=entry.calibration(8, 0))
