"""`intonly` affine rules and constants: bias/offset adds, constant minus value, scalar and channel
scaling, an integer input cast to float, embedding tables gathered and sliced on an int16 grid."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

import qcompile
from qcompile import PipelineContext
from qcompile.backends.onnx import runtime
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
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "tokens"]), helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "tokens", dim]), helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["batch", "tokens"])],
        inits,
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def _feeds(rng, batch: int = 4, tokens: int = 7) -> dict[str, np.ndarray]:
    return {"ids": rng.integers(0, 50, (batch, tokens)).astype(np.int64), "mask": (rng.uniform(size=(batch, tokens)) > 0.3).astype(np.int64)}


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
