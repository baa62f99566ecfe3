"""Cases of category `graph`: a file that parses as an ONNX model whose graph is wrong, or that the CLI
cannot run on random inputs (no inputs, symbolic feature dims, string or empty inputs)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcompile.testing.robustness import models
from qcompile.testing.robustness.case import Case, CaseDirs, save

__all__ = ["CASES"]


def _edit(change):
    """A builder saving models.mlp() after `change(proto)` edited it in place."""

    def build(dirs: CaseDirs) -> None:
        proto = models.mlp()
        change(proto)
        save(proto, dirs.model)

    return build


def _save(make):
    def build(dirs: CaseDirs) -> None:
        save(make(), dirs.model)

    return build


def _node(proto: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in proto.graph.node if n.name == name)


def _init(proto: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in proto.graph.initializer if t.name == name)


def _cycle(proto):
    # add1 reads relu1's output and relu1 reads add1's: add1 → relu1 → add1
    _node(proto, "add1").input[:] = ["h1", "h3"]
    _node(proto, "relu1").input[:] = ["h2"]


def _no_outputs(proto):
    del proto.graph.output[:]


def _output_not_produced(proto):
    proto.graph.output.append(helper.make_tensor_value_info("ghost", TensorProto.FLOAT, ["batch", 8]))


def _dangling_input(proto):
    _node(proto, "mm2").input[0] = "nowhere"


def _duplicate_value(proto):
    proto.graph.node.insert(1, helper.make_node("Relu", ["features"], ["h1"], name="dup_writer"))


def _unknown_op(proto):
    _node(proto, "relu1").op_type = "Frobnicate"


def _unknown_domain(proto):
    _node(proto, "relu1").domain = "com.example.nowhere"
    proto.opset_import.append(helper.make_opsetid("com.example.nowhere", 1))


def _recursive_function(proto):
    body = [helper.make_node("Recur", ["a"], ["b"], name="self_call", domain="local")]
    proto.functions.append(
        helper.make_function(
            "local",
            "Recur",
            ["a"],
            ["b"],
            body,
            [helper.make_opsetid("", models.OPSET), helper.make_opsetid("local", 1)],
        )
    )
    proto.opset_import.append(helper.make_opsetid("local", 1))
    relu = _node(proto, "relu1")
    relu.op_type, relu.domain = "Recur", "local"


def _shape_mismatch(proto):
    index = [i for i, t in enumerate(proto.graph.initializer) if t.name == "w2"][0]
    proto.graph.initializer[index].CopyFrom(numpy_helper.from_array(np.ones((5, 8), np.float32), "w2"))


def _int64_into_matmul(proto):
    proto.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64


def _dim(proto, index: int, value: int):
    dim = proto.graph.input[0].type.tensor_type.shape.dim[index]
    dim.Clear()
    dim.dim_value = value


def _bad_raw_data(proto):
    w1 = _init(proto, "w1")
    w1.raw_data = w1.raw_data[:1000]


def _huge_initializer_dims(proto):
    w1 = _init(proto, "w1")
    del w1.dims[:]
    w1.dims.extend([2**20, 2**20])
    w1.raw_data = b"\0" * 64


def _attr_wrong_type(proto):
    proto.graph.node.append(helper.make_node("Softmax", ["logits"], ["probs"], name="probs", axis="last"))
    proto.graph.output[0].name = "probs"


def _no_inputs() -> onnx.ModelProto:
    proto = models.mlp()
    del proto.graph.input[:]
    const = numpy_helper.from_array(np.ones((1, 16), np.float32), "const_value")
    proto.graph.node.insert(0, helper.make_node("Constant", [], ["features"], name="const_features", value=const))
    return proto


def _string_input() -> onnx.ModelProto:
    proto = models.mlp()
    proto.graph.input[0].name = "text"
    proto.graph.input[0].type.tensor_type.elem_type = TensorProto.STRING
    proto.graph.node.insert(
        0, helper.make_node("Cast", ["text"], ["features"], name="parse_text", to=TensorProto.FLOAT)
    )
    return proto


_NAME = ("model.onnx",)

CASES = [
    Case("graph-cycle", "graph", "error", _edit(_cycle), mentions=(("add1", "relu1"),), api=True),
    Case("graph-no-outputs", "graph", "error", _edit(_no_outputs), mentions=_NAME, api=True),
    Case("graph-output-never-produced", "graph", "error", _edit(_output_not_produced), mentions=("ghost",), api=True),
    Case(
        "graph-input-nothing-produces", "graph", "error", _edit(_dangling_input), mentions=("mm2", "nowhere"), api=True
    ),
    Case(
        "graph-duplicate-value-names",
        "graph",
        "error",
        _edit(_duplicate_value),
        mentions=("h1",),
        api=True,
        note="two nodes (mm1, dup_writer) write 'h1'",
    ),
    Case("graph-unknown-op", "graph", "error", _edit(_unknown_op), mentions=("relu1", "Frobnicate"), api=True),
    Case(
        "graph-unknown-op-in-if",
        "graph",
        "error",
        _save(lambda: models.mlp_with_if(then_op="Frobnicate")),
        mentions=("Frobnicate",),
        api=True,
    ),
    Case("graph-unknown-domain", "graph", "error", _edit(_unknown_domain), mentions=("com.example.nowhere",), api=True),
    Case("graph-recursive-function", "graph", "error", _edit(_recursive_function), mentions=("Recur",), api=True),
    Case(
        "graph-shape-mismatch",
        "graph",
        "error",
        _edit(_shape_mismatch),
        mentions=(("mm2", "w2"),),
        api=True,
        note="MatMul of [batch,16] with a [5,8] initializer",
    ),
    Case(
        "graph-int64-into-float-matmul",
        "graph",
        "error",
        _edit(_int64_into_matmul),
        mentions=(("mm1", "features"),),
        api=True,
    ),
    Case(
        "graph-opset-7",
        "graph",
        "error",
        _save(lambda: models.mlp(opset=7)),
        mentions=("7",),
        note="below the opset QDQ needs (QuantizeLinear 10, per-axis 13); a valid model, refused by the CLI",
    ),
    Case("graph-opset-99", "graph", "error", _save(lambda: models.mlp(opset=99)), mentions=("99",), api=True),
    Case("graph-ir-version-99", "graph", "error", _save(lambda: models.mlp(ir_version=99)), mentions=("99",), api=True),
    Case("graph-negative-dim", "graph", "error", _edit(lambda p: _dim(p, 0, -3)), mentions=("features",), api=True),
    Case(
        "graph-huge-dim",
        "graph",
        "error",
        _edit(lambda p: _dim(p, 0, 2**40)),
        mentions=("features",),
        note="batch declared 2**40: random inputs cannot be made",
    ),
    Case(
        "graph-zero-dim",
        "graph",
        "error",
        _edit(lambda p: _dim(p, 0, 0)),
        mentions=("features",),
        note="an input with a zero dim has no samples to calibrate on",
    ),
    Case(
        "graph-no-inputs",
        "graph",
        "error",
        _save(_no_inputs),
        mentions=_NAME,
        note="only constants: nothing to calibrate",
    ),
    Case(
        "graph-symbolic-dims-no-input-shape",
        "graph",
        "error",
        _save(models.mlp_symbolic),
        mentions=(("hidden", "'x'", "--input-shape"),),
        note="x[batch, seq, hidden] all symbolic and no --input-shape",
    ),
    Case("graph-raw-data-length", "graph", "error", _edit(_bad_raw_data), mentions=("w1",), api=True),
    Case(
        "graph-initializer-huge-dims",
        "graph",
        "error",
        _edit(_huge_initializer_dims),
        mentions=("w1",),
        api=True,
        note="w1 declared 2**20 × 2**20 with 64 bytes of data",
    ),
    Case(
        "graph-attribute-wrong-type",
        "graph",
        "error",
        _edit(_attr_wrong_type),
        mentions=("probs",),
        api=True,
        note="Softmax axis given as a string",
    ),
    Case(
        "graph-string-input",
        "graph",
        "error",
        _save(_string_input),
        mentions=("text",),
        note="a valid model with a string input: no random inputs for it",
    ),
]


def _newest_onnx_opset() -> onnx.ModelProto:
    opset = onnx.defs.onnx_opset_version()
    return models.mlp(
        opset=opset, ir_version=max(models.IR_VERSION, helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))
    )


def _beyond_runtime() -> list[Case]:
    """Where onnx defines a newer opset than ONNX Runtime runs quantized ops at, a model there is refused
    up front (ONNX Runtime would load the float model and fail only on the quantized one)."""
    from qcompile.frontends.structure import runtime_max_opset

    newest = onnx.defs.onnx_opset_version()
    if newest <= runtime_max_opset():
        return []
    return [
        Case(
            "graph-opset-beyond-runtime",
            "graph",
            "error",
            _save(_newest_onnx_opset),
            mentions=(str(newest),),
            api=True,
            note=f"opset {newest}: onnx defines it, ONNX Runtime has no QuantizeLinear kernel there",
        )
    ]


CASES += _beyond_runtime()
