"""`float64_matmul_twin`: integer MatMuls (top-level and inside local functions) become float64 GEMMs that
give the same integers; float MatMuls are left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import qcompile
from qcompile import PipelineContext, runtime
from qcompile.backends.onnx.float64_matmul import float64_matmul_twin
from qcompile.passes.lowering.intonly import IntOnlyPass
from qcompile.testing.builders import tiny_encoder


def _matmul_model(dtype: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [helper.make_tensor_value_info("a", dtype, [3, 40]), helper.make_tensor_value_info("b", dtype, [40, 5])],
        [helper.make_tensor_value_info("c", dtype, [3, 5])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize(
    "dtype, numpy_type, bound", [(TensorProto.INT32, np.int32, 2**12), (TensorProto.INT64, np.int64, 2**20)]
)
def test_integer_matmul_gives_the_same_integers_at_the_range_edges(dtype, numpy_type, bound) -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(-bound, bound, size=(3, 40)).astype(numpy_type)
    b = rng.integers(-bound, bound, size=(40, 5)).astype(numpy_type)
    a[0], b[:, 0] = bound - 1, -bound  # a row of extreme sums: 40·(bound−1)·(−bound)
    twin, rewritten = float64_matmul_twin(_matmul_model(dtype))
    assert rewritten == 1
    got = runtime.run(runtime.make_session(twin), {"a": a, "b": b})["c"]
    assert got.dtype == numpy_type
    np.testing.assert_array_equal(got, a.astype(np.int64) @ b.astype(np.int64))


def test_float_matmul_is_left_alone() -> None:
    twin, rewritten = float64_matmul_twin(_matmul_model(TensorProto.FLOAT))
    assert rewritten == 0 and [n.op_type for n in twin.graph.node] == ["MatMul"]


def test_twin_of_an_integer_encoder_is_bit_identical() -> None:
    tiny = tiny_encoder()
    context = PipelineContext(calibration=tiny.calibration, progress=False)
    qcompile.run_passes(tiny.model, "w8a8", context=context)
    IntOnlyPass(context=context)(tiny.model)
    proto = ir.serde.serialize_model(tiny.model)
    twin, rewritten = float64_matmul_twin(proto)
    assert rewritten >= 3  # the IntLinear body and the attention's two activation products
    assert not any(n.op_type == "MatMul" and n.domain == "" for n in twin.graph.node if "f64mm" not in n.name)
    expected = runtime.run(runtime.make_session(proto), tiny.feeds)["y"]
    np.testing.assert_array_equal(runtime.run(runtime.make_session(twin), tiny.feeds)["y"], expected)
