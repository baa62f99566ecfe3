"""Tests of `compute_in_float32`: float16 / bfloat16 models rewritten to compute in float32.

Each model is built with onnx.helper, rewritten, checked with `onnx.checker` (full_check) and run in ONNX
Runtime's CPU provider against a NumPy reference of the same math. Tolerances:

* float32 intermediates vs NumPy float32 on the same (upcast) weights: rtol 1e-5, atol 1e-5 (only the
  summation order of 16-term dot products differs);
* an fp16 output vs that reference rounded to fp16: at most one fp16 ulp (the float32 results can land on
  opposite sides of an fp16 rounding boundary);
* the rewritten model vs the original fp16 model in ONNX Runtime: atol 2e-2 + rtol 1e-2 (fp16 rounding
  of each intermediate; the original has epsilon 2^-10 per op on values of size ~1);
* bfloat16 (which ONNX Runtime's CPU provider cannot compute): the rewritten model vs a NumPy emulation
  of the original bf16 model (each op rounded to bf16 with ml_dtypes): atol 0.1 + rtol 0.05 (epsilon 2^-7).
"""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompile
from qcompile.errors import InputError
from qcompile.frontends.precision import compute_in_float32
from qcompile.testing.builders import tiny_encoder_proto

D = 16
_NP = {TensorProto.FLOAT16: np.float16, TensorProto.BFLOAT16: ml_dtypes.bfloat16, TensorProto.FLOAT: np.float32}


# -- helpers ---------------------------------------------------------------------------------------------


def _tensor(array: np.ndarray, name: str, elem_type: int) -> onnx.TensorProto:
    """An initializer of `elem_type` holding `array` rounded to that type (bf16 via ml_dtypes)."""
    if elem_type == TensorProto.BFLOAT16:
        bits = np.asarray(array, np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)
        return helper.make_tensor(name, TensorProto.BFLOAT16, array.shape, bits.tobytes(), raw=True)
    return numpy_helper.from_array(np.asarray(array).astype(_NP[elem_type]), name)


def _model(nodes, inputs, outputs, initializers=(), functions=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("local", 1)] if functions else [])
    proto = helper.make_model(graph, opset_imports=imports, functions=list(functions))
    proto.ir_version = 8
    return proto


def _rewrite(proto: onnx.ModelProto) -> tuple[ir.Model, list[str]]:
    model = ir.serde.deserialize_model(proto)
    return model, compute_in_float32(model)


def _proto(model: ir.Model) -> onnx.ModelProto:
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray], extra_outputs: tuple[str, ...] = ()) -> list[np.ndarray]:
    if extra_outputs:
        proto = onnx.ModelProto.FromString(proto.SerializeToString())
        proto.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in extra_outputs)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _low_precision_uses(proto: onnx.ModelProto) -> list[str]:
    """Every place (value type, initializer, attribute) that names FLOAT16/BFLOAT16, in all graphs."""
    low = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
    found: list[str] = []

    def graph(g: onnx.GraphProto, where: str) -> None:
        for v in (*g.input, *g.output, *g.value_info):
            if v.type.tensor_type.elem_type in low:
                found.append(f"{where}:value:{v.name}")
        found.extend(f"{where}:initializer:{t.name}" for t in g.initializer if t.data_type in low)
        nodes(g.node, where)

    def nodes(node_list, where: str) -> None:
        for n in node_list:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.INT and a.name in ("to", "dtype") and a.i in low:
                    found.append(f"{where}:attr:{n.op_type}.{a.name}:{n.output[0]}")
                if a.type == onnx.AttributeProto.TENSOR and a.t.data_type in low:
                    found.append(f"{where}:tensor:{n.op_type}.{a.name}")
                if a.type == onnx.AttributeProto.GRAPH:
                    graph(a.g, f"{where}/{n.op_type}.{a.name}")

    graph(proto.graph, "main")
    for f in proto.functions:
        nodes(f.node, f"function {f.name}")
        for v in f.value_info:
            if v.type.tensor_type.elem_type in low:
                found.append(f"function {f.name}:value:{v.name}")
    return found


def _weights(elem_type: int, seed: int = 0) -> dict[str, np.ndarray]:
    """MLP weights, rounded to `elem_type` and returned as float32 (exactly the stored values)."""
    rng = np.random.default_rng(seed)
    raw = {"w1": rng.normal(0, 0.25, (D, D)), "b1": rng.normal(0, 0.1, (D,)), "w2": rng.normal(0, 0.25, (D, D))}
    return {k: v.astype(np.float32).astype(_NP[elem_type]).astype(np.float32) for k, v in raw.items()}


def _mlp_proto(elem_type: int) -> onnx.ModelProto:
    """x[batch,16] → MatMul → Add → Relu → MatMul → y, all in `elem_type`."""
    w = _weights(elem_type)
    return _model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
            helper.make_node("Add", ["h", "b1"], ["a"], name="add"),
            helper.make_node("Relu", ["a"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
        ],
        [helper.make_tensor_value_info("x", elem_type, ["batch", D])],
        [helper.make_tensor_value_info("y", elem_type, ["batch", D])],
        [_tensor(w[k], k, elem_type) for k in ("w1", "b1", "w2")],
    )


def _mlp_reference(x: np.ndarray, w: dict[str, np.ndarray], rounding=None) -> np.ndarray:
    """The MLP in NumPy float32; `rounding` (e.g. to bf16) applied after each op emulates a narrow model."""
    r = rounding or (lambda a: a)
    h = r(x.astype(np.float32) @ w["w1"])
    a = r(h + w["b1"])
    return r(np.maximum(a, 0) @ w["w2"])


def _feeds(dtype, batch: int = 8, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (batch, D)).astype(dtype)


def _within_one_fp16_ulp(got: np.ndarray, exact: np.ndarray) -> None:
    exact16 = exact.astype(np.float16)
    ulp = np.spacing(np.abs(exact16)).astype(np.float32)
    assert np.all(np.abs(got.astype(np.float32) - exact16.astype(np.float32)) <= ulp), "more than one fp16 ulp off"


# -- the facts about ONNX Runtime the rewrite rests on -----------------------------------------------------


def test_onnxruntime_cpu_casts_bf16_but_python_cannot_feed_or_fetch_bf16_and_cpu_has_no_bf16_matmul() -> None:
    """If this starts failing, ONNX Runtime changed: bf16 interfaces could then be kept (docs/methods/precision.md)."""
    cast_in = _model(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    cast_out = _model(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.BFLOAT16)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [2])],
    )
    session_in = ort.InferenceSession(cast_in.SerializeToString(), providers=["CPUExecutionProvider"])
    session_out = ort.InferenceSession(cast_out.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([1.5, -2.25], np.float32)
    with pytest.raises(Exception):
        session_in.run(None, {"x": x.astype(ml_dtypes.bfloat16)})
    with pytest.raises(Exception):
        session_in.run(None, {"x": x.astype(ml_dtypes.bfloat16).view(np.uint16)})
    with pytest.raises(Exception):
        session_out.run(None, {"x": x})
    # The Cast kernels themselves exist: through an IOBinding of raw uint16 buffers they run bit-exactly.
    binding = session_in.io_binding()
    binding.bind_ortvalue_input(
        "x",
        ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
            x.astype(ml_dtypes.bfloat16).view(np.uint16), TensorProto.BFLOAT16
        ),
    )
    binding.bind_output("y")
    session_in.run_with_iobinding(binding)
    np.testing.assert_array_equal(binding.copy_outputs_to_cpu()[0], x)
    with pytest.raises(Exception, match="NOT_IMPLEMENTED|implementation"):
        ort.InferenceSession(_mlp_proto(TensorProto.BFLOAT16).SerializeToString(), providers=["CPUExecutionProvider"])


# -- fp16 --------------------------------------------------------------------------------------------------


def test_fp16_mlp_computes_in_float32_with_its_fp16_interface() -> None:
    original = _mlp_proto(TensorProto.FLOAT16)
    model, changes = _rewrite(original)
    proto = _proto(model)

    assert changes and "float32" in changes[0]
    assert any("input 'x' stays FLOAT16" in c for c in changes)
    assert any("output 'y' stays FLOAT16" in c for c in changes)
    assert [(v.name, v.type.tensor_type.elem_type) for v in proto.graph.input] == [("x", TensorProto.FLOAT16)]
    assert [(v.name, v.type.tensor_type.elem_type) for v in proto.graph.output] == [("y", TensorProto.FLOAT16)]
    # FLOAT16 only at the interface and in the output's boundary Cast
    assert _low_precision_uses(proto) == ["main:value:x", "main:value:y", "main:attr:Cast.to:y"]
    casts = [n for n in proto.graph.node if n.op_type == "Cast"]
    assert [(n.input[0], n.attribute[0].i) for n in casts] == [
        ("x", TensorProto.FLOAT),
        ("y__float32", TensorProto.FLOAT16),
    ]
    assert all(t.data_type == TensorProto.FLOAT for t in proto.graph.initializer)

    x = _feeds(np.float16)
    w = _weights(TensorProto.FLOAT16)
    reference = _mlp_reference(x, w)
    y, y32 = _run(proto, {"x": x}, extra_outputs=("y__float32",))
    assert y.dtype == np.float16 and y32.dtype == np.float32
    np.testing.assert_allclose(y32, reference, rtol=1e-5, atol=1e-5)
    _within_one_fp16_ulp(y, reference)
    (y_original,) = _run(original, {"x": x})
    assert y_original.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float32), y_original.astype(np.float32), rtol=1e-2, atol=2e-2)


def test_initializers_upcast_exactly_including_subnormals_infinities_and_signed_zero() -> None:
    special = np.array([0.0, -0.0, 6e-8, -6e-8, 6.1e-5, 65504, -65504, np.inf, -np.inf, 1 / 3, np.pi, 1e-4], np.float32)
    for elem_type in (TensorProto.FLOAT16, TensorProto.BFLOAT16):
        original = _model(
            [helper.make_node("Mul", ["x", "c"], ["y"])],
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [special.size])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [special.size])],
            [_tensor(special, "c", elem_type)],
        )
        stored = numpy_helper.to_array(original.graph.initializer[0])
        model, _ = _rewrite(original)
        upcast = model.graph.initializers["c"].const_value.numpy()
        assert upcast.dtype == np.float32
        np.testing.assert_array_equal(upcast, stored.astype(np.float32))
        assert np.array_equal(np.signbit(upcast), np.signbit(stored.astype(np.float32)))
        # and back: the float32 numbers are exactly the stored ones, bit for bit
        back = upcast.astype(_NP[elem_type])
        assert back.tobytes() == np.asarray(stored).astype(_NP[elem_type]).tobytes()


def test_a_cast_to_float16_inside_the_graph_becomes_a_float32_identity() -> None:
    # float32 in/out; the middle rounds to fp16, multiplies by an fp16 weight, casts back
    original = _model(
        [
            helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16, name="down"),
            helper.make_node("Mul", ["x16", "w"], ["m"], name="mul"),
            helper.make_node("Cast", ["m"], ["y"], to=TensorProto.FLOAT, name="up"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [_tensor(np.full(4, 3.0, np.float32), "w", TensorProto.FLOAT16)],
    )
    model, changes = _rewrite(original)
    proto = _proto(model)
    assert changes
    assert _low_precision_uses(proto) == []
    down = next(n for n in proto.graph.node if n.name == "down")
    assert down.attribute[0].i == TensorProto.FLOAT
    x = np.array([1.0001, 0.1, 1e-6, 70000.0], np.float32)  # none of them is an fp16 number
    (y,) = _run(proto, {"x": x})
    np.testing.assert_array_equal(y, x * np.float32(3.0))  # no fp16 rounding left
    # The original's ONNX semantics round (and overflow 70000 to inf); ONNX Runtime's CPU provider itself
    # drops such a lossy Cast(float→fp16)…Cast(fp16→float) pair, so NumPy states those semantics here.
    with np.errstate(over="ignore"):
        rounded = (x.astype(np.float16) * np.float16(3.0)).astype(np.float32)
    assert not np.any(y == rounded)


# -- bf16 --------------------------------------------------------------------------------------------------


def test_bf16_mlp_computes_in_float32_with_a_float32_interface() -> None:
    model, changes = _rewrite(_mlp_proto(TensorProto.BFLOAT16))
    proto = _proto(model)

    assert any("input 'x' was BFLOAT16 and is now FLOAT" in c for c in changes)
    assert any("output 'y' was BFLOAT16 and is now FLOAT" in c for c in changes)
    assert _low_precision_uses(proto) == []
    assert [v.type.tensor_type.elem_type for v in (*proto.graph.input, *proto.graph.output)] == [TensorProto.FLOAT] * 2
    assert [n.op_type for n in proto.graph.node] == ["MatMul", "Add", "Relu", "MatMul"]  # no Casts needed

    w = _weights(TensorProto.BFLOAT16)
    x_bf16 = _feeds(ml_dtypes.bfloat16)
    (y,) = _run(proto, {"x": x_bf16.astype(np.float32)})  # bf16 inputs are fed as (exact) float32
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, _mlp_reference(x_bf16, w), rtol=1e-5, atol=1e-5)
    emulated = _mlp_reference(x_bf16, w, rounding=lambda a: a.astype(ml_dtypes.bfloat16).astype(np.float32))
    np.testing.assert_allclose(y, emulated, rtol=5e-2, atol=1e-1)


# -- subgraphs and functions ---------------------------------------------------------------------------------


def _if_proto() -> onnx.ModelProto:
    """y = If(c) then h + 0.5 else h * 2 (fp16 Constants inside the branches), h = x * w."""
    then = helper.make_graph(
        [
            helper.make_node(
                "Constant", [], ["half"], value=_tensor(np.full(D, 0.5, np.float32), "half_t", TensorProto.FLOAT16)
            ),
            helper.make_node("Add", ["h", "half"], ["then_out"]),
        ],
        "then",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT16, ["batch", D])],
    )
    other = helper.make_graph(
        [
            helper.make_node(
                "Constant", [], ["two"], value=_tensor(np.full(D, 2.0, np.float32), "two_t", TensorProto.FLOAT16)
            ),
            helper.make_node("Mul", ["h", "two"], ["else_out"]),
        ],
        "else",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT16, ["batch", D])],
    )
    w = np.linspace(-1, 1, D).astype(np.float32)
    return _model(
        [
            helper.make_node("Mul", ["x", "w"], ["h"]),
            helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other),
        ],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", D]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["batch", D])],
        [_tensor(w, "w", TensorProto.FLOAT16)],
    )


def test_if_branches_with_fp16_constants_are_rewritten() -> None:
    original = _if_proto()
    model, _ = _rewrite(original)
    proto = _proto(model)
    assert _low_precision_uses(proto) == ["main:value:x", "main:value:y", "main:attr:Cast.to:y"]
    x = _feeds(np.float16)
    w = np.linspace(-1, 1, D).astype(np.float16).astype(np.float32)
    for cond, expected in ((True, x.astype(np.float32) * w + 0.5), (False, x.astype(np.float32) * w * 2)):
        y, y32 = _run(proto, {"x": x, "c": np.array(cond)}, extra_outputs=("y__float32",))
        assert y.dtype == np.float16
        np.testing.assert_allclose(y32, expected, rtol=1e-6, atol=1e-6)
        _within_one_fp16_ulp(y, expected)
        (y_original,) = _run(original, {"x": x, "c": np.array(cond)})
        np.testing.assert_allclose(y.astype(np.float32), y_original.astype(np.float32), rtol=1e-2, atol=2e-2)


def _function_proto() -> onnx.ModelProto:
    """local.ScaleShift(v) = Cast(v * 0.5 + Constant_fp16, to=@dtype); the call gives dtype=FLOAT16."""
    function = helper.make_function(
        "local",
        "ScaleShift",
        ["v"],
        ["out"],
        [
            helper.make_node(
                "Constant", [], ["half"], value=_tensor(np.array(0.5, np.float32), "half_t", TensorProto.FLOAT16)
            ),
            helper.make_node(
                "Constant", [], ["shift"], value=_tensor(np.full(D, 0.25, np.float32), "shift_t", TensorProto.FLOAT16)
            ),
            helper.make_node("Mul", ["v", "half"], ["scaled"]),
            helper.make_node("Add", ["scaled", "shift"], ["sum"]),
            _cast_with_reference("sum", "out"),
        ],
        opset_imports=[helper.make_opsetid("", 17)],
        attributes=["dtype"],
    )
    call = helper.make_node("ScaleShift", ["x"], ["y"], domain="local", dtype=TensorProto.FLOAT16, name="call")
    return _model(
        [call],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["batch", D])],
        functions=[function],
    )


def _cast_with_reference(source: str, target: str) -> onnx.NodeProto:
    node = helper.make_node("Cast", [source], [target])
    attr = onnx.AttributeProto(name="to", ref_attr_name="dtype", type=onnx.AttributeProto.INT)
    node.attribute.append(attr)
    return node


def test_model_local_functions_with_fp16_constants_and_dtype_references_are_rewritten() -> None:
    original = _function_proto()
    model, _ = _rewrite(original)
    proto = _proto(model)
    assert _low_precision_uses(proto) == ["main:value:x", "main:value:y", "main:attr:Cast.to:y"]
    call = next(n for n in proto.graph.node if n.op_type == "ScaleShift")
    assert [(a.name, a.i) for a in call.attribute] == [("dtype", TensorProto.FLOAT)]
    x = _feeds(np.float16)
    expected = x.astype(np.float32) * 0.5 + 0.25
    y, y32 = _run(proto, {"x": x}, extra_outputs=("y__float32",))
    np.testing.assert_array_equal(y32, expected)  # exact: a halving and an add of 0.25 in float32
    _within_one_fp16_ulp(y, expected)
    (y_original,) = _run(original, {"x": x})
    np.testing.assert_allclose(y.astype(np.float32), y_original.astype(np.float32), rtol=1e-2, atol=2e-2)


# -- no-op and idempotence --------------------------------------------------------------------------------


def test_a_float32_model_is_untouched_byte_for_byte() -> None:
    original = tiny_encoder_proto()
    model = ir.serde.deserialize_model(original)
    before = ir.serde.serialize_model(model).SerializeToString()
    assert compute_in_float32(model) == []
    assert ir.serde.serialize_model(model).SerializeToString() == before


@pytest.mark.parametrize(
    "build",
    [lambda: _mlp_proto(TensorProto.FLOAT16), lambda: _mlp_proto(TensorProto.BFLOAT16), _if_proto, _function_proto],
    ids=["fp16-mlp", "bf16-mlp", "if", "function"],
)
def test_rewriting_twice_equals_rewriting_once(build) -> None:
    model, changes = _rewrite(build())
    assert changes
    once = ir.serde.serialize_model(model).SerializeToString()
    assert compute_in_float32(model) == []
    assert ir.serde.serialize_model(model).SerializeToString() == once
    # also after a save/load round trip (what `qcompile.load` of a rewritten file would see)
    reloaded = ir.serde.deserialize_model(onnx.ModelProto.FromString(once))
    assert compute_in_float32(reloaded) == []
    assert ir.serde.serialize_model(reloaded).SerializeToString() == once


def test_an_fp16_output_read_elsewhere_and_an_input_passed_through_keep_their_interface() -> None:
    # y = x @ w (fp16) is also read by Relu → z; x is also a graph output as is
    original = _model(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, D])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT16, [2, D]) for n in ("y", "z", "x")],
        [_tensor(np.eye(D, dtype=np.float32) * 0.5, "w", TensorProto.FLOAT16)],
    )
    model, _ = _rewrite(original)
    proto = _proto(model)
    assert [(v.name, v.type.tensor_type.elem_type) for v in proto.graph.output] == [
        (n, TensorProto.FLOAT16) for n in ("y", "z", "x")
    ]
    x = _feeds(np.float16, batch=2)
    y, z, x_out = _run(proto, {"x": x})
    np.testing.assert_array_equal(y, x * np.float16(0.5))
    np.testing.assert_array_equal(z, np.maximum(x * np.float16(0.5), 0))
    np.testing.assert_array_equal(x_out, x)


def test_a_bitcast_of_fp16_bits_is_refused_before_anything_changes() -> None:
    original = _model(
        [helper.make_node("BitCast", ["x"], ["y"], to=TensorProto.INT16)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2])],
        [helper.make_tensor_value_info("y", TensorProto.INT16, [2])],
        opset=26,
    )
    model = ir.serde.deserialize_model(original)
    before = ir.serde.serialize_model(model).SerializeToString()
    with pytest.raises(InputError, match=r"^m\.onnx: node .*BitCast"):
        compute_in_float32(model, source="m.onnx")
    assert ir.serde.serialize_model(model).SerializeToString() == before


# -- end to end through the pass pipeline ----------------------------------------------------------------------


def test_fp16_model_quantizes_w8a8_after_the_rewrite_and_the_qdq_export_runs_with_fp16_feeds(tmp_path: Path) -> None:
    original = _mlp_proto(TensorProto.FLOAT16)
    model, _ = _rewrite(original)
    float_proto = _proto(model)
    batches = [{"x": _feeds(np.float16, batch=8, seed=10 + i)} for i in range(4)]

    records = qcompile.run_passes(model, "w8a8", calibration=qcompile.CalibrationData.from_list(batches))
    assert [r["name"] for r in records] == ["calibrate", "quantize"]
    assert records[0]["stats"]["values"] == 2  # both MatMuls' activations were calibrated
    path = qcompile.backends.onnx.export(model, tmp_path / "model.qdq.onnx")

    exported = onnx.load(str(path))
    assert sum(n.op_type == "QuantizeLinear" for n in exported.graph.node) >= 2
    assert [(v.name, v.type.tensor_type.elem_type) for v in exported.graph.input] == [("x", TensorProto.FLOAT16)]
    x = _feeds(np.float16, batch=16, seed=99)
    (y_q,) = _run(exported, {"x": x})
    (y_f,) = _run(float_proto, {"x": x})
    assert y_q.dtype == np.float16
    a, b = y_q.astype(np.float64).ravel(), y_f.astype(np.float64).ravel()
    cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert cosine > 0.99, cosine
    assert not np.array_equal(y_q, y_f)  # it was quantized


def _fp16_encoder_proto() -> onnx.ModelProto:
    """qcompile's tiny encoder block (LayerNorm, attention with Softmax, Erf GELU) stored in float16."""
    proto = tiny_encoder_proto()
    for tensor in proto.graph.initializer:
        if tensor.data_type == TensorProto.FLOAT:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name))
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.checker.check_model(proto, full_check=True)
    return proto


def test_fp16_transformer_block_rewrites_matches_the_original_and_quantizes(tmp_path: Path) -> None:
    original = _fp16_encoder_proto()
    model, _ = _rewrite(original)
    float_proto = _proto(model)
    assert _low_precision_uses(float_proto) == ["main:value:x", "main:value:y", "main:attr:Cast.to:y"]
    (name,) = [i.name for i in float_proto.graph.input]
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, (4, 6, 32)).astype(np.float16)
    (y_f,) = _run(float_proto, {name: x})
    (y_original,) = _run(original, {name: x})
    assert y_f.dtype == np.float16
    np.testing.assert_allclose(y_f.astype(np.float32), y_original.astype(np.float32), rtol=1e-2, atol=2e-2)

    batches = [{name: rng.normal(0, 1, (4, 6, 32)).astype(np.float16)} for _ in range(4)]
    qcompile.run_passes(model, "w8a8", calibration=qcompile.CalibrationData.from_list(batches))
    (y_q,) = _run(onnx.load(str(qcompile.backends.onnx.export(model, tmp_path / "m.qdq.onnx"))), {name: x})
    a, b = y_q.astype(np.float64).ravel(), y_f.astype(np.float64).ravel()
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99
