"""`intonly` affine rules and constants: bias/offset adds, constant minus value, scalar and channel
scaling, an integer input cast to float, embedding tables gathered and sliced on an int16 grid."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

import qcompile
from qcompile import PipelineContext, runtime
from qcompile.intops.reference import run_reference
from qcompile.passes.lowering.intonly import IntOnlyPass, float_values
from qcompile.pipeline.numerics import sqnr_db


def _embedding_model(vocab: int = 50, dim: int = 16, seed: int = 0) -> ir.Model:
    """ids → word table Gather + position table Slice + constant type row → LayerNorm → linear;
    mask → Cast → (1 − m)·(−100) as a second output (the BERT additive attention mask)."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.05, (vocab, dim)).astype(np.float32), "word"),
        numpy_helper.from_array(rng.normal(0, 0.05, (32, dim)).astype(np.float32), "position"),
        numpy_helper.from_array(rng.normal(0, 0.05, dim).astype(np.float32), "type_row"),
        numpy_helper.from_array((1 + rng.normal(0, 0.1, dim)).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.normal(0, 0.1, dim).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.normal(0, dim**-0.5, (dim, dim)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one_i"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(-100.0, np.float32), "neg"),
    ]
    nodes = [
        helper.make_node("Shape", ["ids"], ["shape"], start=1, end=2),
        helper.make_node("Slice", ["position", "zero", "shape", "zero"], ["pos"]),
        helper.make_node("Gather", ["word", "ids"], ["emb"], axis=0),
        helper.make_node("Add", ["emb", "pos"], ["sum1"]),
        helper.make_node("Add", ["sum1", "type_row"], ["sum2"]),
        helper.make_node("LayerNormalization", ["sum2", "gamma", "beta"], ["ln"], axis=-1, epsilon=1e-12),
        helper.make_node("MatMul", ["ln", "w"], ["y"]),
        helper.make_node("Cast", ["mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "mask_f"], ["inverted"]),
        helper.make_node("Mul", ["inverted", "neg"], ["bias"]),
    ]
    graph = helper.make_graph(
        nodes,
        "embedding",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "tokens"]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "tokens"]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "tokens", dim]),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["batch", "tokens"]),
        ],
        inits,
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def _feeds(rng, batch: int = 4, tokens: int = 7) -> dict[str, np.ndarray]:
    return {
        "ids": rng.integers(0, 50, (batch, tokens)).astype(np.int64),
        "mask": (rng.uniform(size=(batch, tokens)) > 0.3).astype(np.int64),
    }


def test_embeddings_and_mask_lower_to_integers() -> None:
    rng = np.random.default_rng(1)
    data = qcompile.CalibrationData.from_list([_feeds(rng) for _ in range(3)])
    feeds = _feeds(rng)
    reference = runtime.run(runtime.make_session(_embedding_model()), feeds)
    model = _embedding_model()
    context = PipelineContext(calibration=data, progress=False)
    qcompile.run_passes(model, "w8a8", context=context)
    IntOnlyPass(context=context)(model)
    assert float_values(model) == []
    ops = [n.op_type for n in model.graph]
    assert "Gather" in ops and "Slice" in ops and "ILayerNorm" in ops and "IntAdd" in ops
    integer = runtime.run(runtime.make_session(model), feeds)
    for name, array in run_reference(ir.serde.serialize_model(model), feeds).items():
        np.testing.assert_array_equal(array, integer[name])
    # the mask bias is exact: (1 − m)·(−100) from the integer mask, with no rounding anywhere
    np.testing.assert_array_equal(integer["bias"], reference["bias"])
    assert sqnr_db(reference["y"], integer["y"]) > 30.0


def _masked_attention(dim: int = 8, tokens: int = 6, penalty: float = -10000.0, seed: int = 2) -> ir.Model:
    """softmax(q·kᵀ + (1 − mask)·penalty)·v on one head, q = k = v = x·W (BERT's additive mask)."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(0, dim**-0.5, (dim, dim)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(penalty, np.float32), "penalty"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Transpose", ["h"], ["ht"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["h", "ht"], ["scores"]),
        helper.make_node("Cast", ["mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "mask_f"], ["inverted"]),
        helper.make_node("Mul", ["inverted", "penalty"], ["bias"]),
        helper.make_node("Unsqueeze", ["bias", "axis1"], ["bias3"]),
        helper.make_node("Add", ["scores", "bias3"], ["masked"], name="mask_add"),
        helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "h"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "masked_attention",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", tokens, dim]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", tokens]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", tokens, dim])],
        inits,
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def _masked_feeds(rng, batch: int = 4, tokens: int = 6) -> dict[str, np.ndarray]:
    mask = np.ones((batch, tokens), np.int64)
    for row in range(batch):
        mask[row, rng.integers(2, tokens + 1) :] = 0  # padded tails
    return {"x": rng.normal(0, 1, (batch, tokens, 8)).astype(np.float32), "mask": mask}


def test_an_additive_attention_mask_becomes_an_integer_penalty() -> None:
    rng = np.random.default_rng(3)
    data = qcompile.CalibrationData.from_list([_masked_feeds(rng) for _ in range(3)])
    feeds = _masked_feeds(rng)
    reference = runtime.run(runtime.make_session(_masked_attention()), feeds)["y"]
    model = _masked_attention()
    context = PipelineContext(calibration=data, progress=False)
    qcompile.run_passes(model, "w8a8", context=context)
    IntOnlyPass(context=context)(model)
    ops = [n.op_type for n in model.graph]
    assert "Where" in ops and "IntAdd" not in ops and float_values(model) == []
    integer = runtime.run(runtime.make_session(model), feeds)["y"]
    np.testing.assert_array_equal(run_reference(ir.serde.serialize_model(model), feeds)["y"], integer)
    assert sqnr_db(reference, integer) > 33.0  # 35.5 dB, as the QDQ model with a float softmax


def test_a_mask_with_a_small_penalty_is_an_ordinary_add() -> None:
    rng = np.random.default_rng(4)
    data = qcompile.CalibrationData.from_list([_masked_feeds(rng) for _ in range(2)])
    model = _masked_attention(penalty=-3.0)  # a soft bias, not a mask: added on its calibrated grid
    context = PipelineContext(calibration=data, progress=False)
    qcompile.run_passes(model, "w8a8", context=context)
    IntOnlyPass(context=context)(model)
    ops = [n.op_type for n in model.graph]
    assert "Where" not in ops and "IntAdd" in ops


def _pooling_model(dim: int = 8) -> ir.Model:
    """sentence-transformers' tail: masked mean over tokens, then L2 normalization (as exported)."""
    inits = [
        numpy_helper.from_array(np.array([-1], np.int64), "last"),
        numpy_helper.from_array(np.array([1], np.int64), "tokens_axis"),
        numpy_helper.from_array(np.array(1e-9, np.float32), "tiny"),
        numpy_helper.from_array(np.array(1e-12, np.float32), "tinier"),
    ]
    nodes = [
        helper.make_node("Cast", ["mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "last"], ["mask3"]),
        helper.make_node("Mul", ["x", "mask3"], ["kept"]),
        helper.make_node("ReduceSum", ["kept", "tokens_axis"], ["total"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "tokens_axis"], ["count"], keepdims=0),
        helper.make_node("Clip", ["count", "tiny"], ["count_safe"]),
        helper.make_node("Div", ["total", "count_safe"], ["mean"]),
        helper.make_node("ReduceL2", ["mean", "last"], ["norm"], keepdims=1),
        helper.make_node("Clip", ["norm", "tinier"], ["norm_safe"]),
        helper.make_node("Div", ["mean", "norm_safe"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "pooling",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", dim]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "tokens"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dim])],
        inits,
    )
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    from qcompile.ir.properties import Property, set_properties

    set_properties(model, {Property.QUANTIZED})  # nothing to quantize here: no linear layers
    return model


def test_masked_mean_pooling_and_l2_normalization_lower_to_integers() -> None:
    rng = np.random.default_rng(5)
    data = qcompile.CalibrationData.from_list([_masked_feeds(rng) for _ in range(3)])
    feeds = _masked_feeds(rng)
    reference = runtime.run(runtime.make_session(_pooling_model()), feeds)["y"]
    model = _pooling_model()
    IntOnlyPass(context=PipelineContext(calibration=data, progress=False))(model)
    ops = [n.op_type for n in model.graph]
    assert "IntSqrt" in ops and "ReduceL2" not in ops and float_values(model) == []
    integer = runtime.run(runtime.make_session(model), feeds)["y"]
    np.testing.assert_array_equal(run_reference(ir.serde.serialize_model(model), feeds)["y"], integer)
    # unit vectors from an int16 input grid: each component within 1e-3
    assert np.abs(integer - reference).max() < 1e-3
    assert np.allclose(np.linalg.norm(integer, axis=-1), 1.0, atol=2e-3)
