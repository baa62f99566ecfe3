"""`qcompile.Lookup`: ONNX Runtime == NumPy reference == plain indexing, for every table container."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from qcompile.intops.kernels import add_kernel
from qcompile.intops.lookup import Lookup, lookup

DTYPES = {
    np.uint8: TensorProto.UINT8,
    np.int8: TensorProto.INT8,
    np.int16: TensorProto.INT16,
    np.int32: TensorProto.INT32,
}


def _session(dtype) -> ort.InferenceSession:
    import onnx_ir as ir

    graph = helper.make_graph(
        [helper.make_node("Lookup", ["x", "table", "first"], ["y"], domain="qcompile")],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.INT32, ["n"]),
            helper.make_tensor_value_info("table", DTYPES[dtype], ["t"]),
            helper.make_tensor_value_info("first", TensorProto.INT32, []),
        ],
        [helper.make_tensor_value_info("y", DTYPES[dtype], ["n"])],
    )
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    add_kernel(model, Lookup)
    return ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), providers=["CPUExecutionProvider"])


SESSIONS = {dtype: _session(dtype) for dtype in DTYPES}


@settings(max_examples=100, deadline=None)
@given(
    dtype=st.sampled_from(list(DTYPES)),
    first=st.integers(-(2**20), 2**20),
    size=st.integers(1, 2000),
    seed=st.integers(0, 2**32 - 1),
)
def test_onnx_runtime_matches_the_reference_and_plain_indexing(dtype, first, size, seed) -> None:
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    table = rng.integers(info.min, int(info.max) + 1, size=size).astype(dtype)
    x = rng.integers(first - 50, first + size + 50, size=300).astype(np.int32)
    x[:2] = [first, first + size - 1]  # both ends of the table; some codes beyond them
    expected = np.array([table[min(max(int(v) - first, 0), size - 1)] for v in x], dtype=dtype)
    out = SESSIONS[dtype].run(None, {"x": x, "table": table, "first": np.array(first, np.int32)})[0]
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(lookup(x, table, first), expected)


def test_codes_outside_the_table_read_its_end_entries() -> None:
    # Gather alone would wrap x − first = −1 to the last entry; the clamp reads the first
    table = np.arange(100, 110, dtype=np.int16)
    x = np.array([-15, -11, -10, -1, 0, 5, 1000], np.int32)
    expected = np.array([100, 100, 100, 109, 109, 109, 109], np.int16)
    np.testing.assert_array_equal(lookup(x, table, -10), expected)
    np.testing.assert_array_equal(
        SESSIONS[np.int16].run(None, {"x": x, "table": table, "first": np.array(-10, np.int32)})[0], expected
    )
