"""qcompile.KroneckerRotate: ONNX Runtime result vs x·(A ⊗ B) in float64, standard-op body, reuse on reinsertion."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from qcompile import runtime
from qcompile.ir.online_ops import DOMAIN, KRONECKER_ROTATE, insert_kronecker_rotate, kronecker_rotate
from qcompile.math.hadamard import Rotation, online_rotation


def _graph_with_input(n: int, opset: int = 17) -> tuple[ir.Model, ir.Value, ir.Value]:
    """x [2, 5, n] → Identity → h; returns (model, x, h). The Identity gives h a producer and the graph a node."""
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([2, 5, n]))
    identity = ir.node("Identity", [x], name="copy")
    h = identity.outputs[0]
    h.name, h.type, h.shape = "h", ir.TensorType(ir.DataType.FLOAT), ir.Shape([2, 5, n])
    graph = ir.Graph([x], [], nodes=[identity], opset_imports={"": opset}, name="online")
    return ir.Model(graph, ir_version=9), x, h


def _input(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, 5, n)).astype(np.float32)


def _expected(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x · (A ⊗ B) over the last axis, float64, with the dense Kronecker product."""
    return x.astype(np.float64) @ np.kron(a.astype(np.float64), b.astype(np.float64))


def _assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-5) -> None:
    # relative to the largest expected magnitude (float32 inputs and factors, float32 accumulation in ORT)
    assert actual.shape == expected.shape
    err = np.abs(actual.astype(np.float64) - expected).max()
    assert err <= rtol * np.abs(expected).max(), (err, np.abs(expected).max())


# n = 32: A = [1], B = H_32/√32; n = 384: A = H_12/√12 (Paley, not symmetric), B = H_32/√32;
# n = 6: no Hadamard of order 3, so A is a 3x3 random orthogonal matrix and B = H_2/√2.
@pytest.mark.parametrize(
    ("n", "factors", "kind"), [(32, (1, 32), "hadamard"), (384, (12, 32), "hadamard"), (6, (3, 2), "random-orthogonal")]
)
def test_onnx_runtime_matches_dense_kronecker_product(n, factors, kind):
    rotation = online_rotation(n, seed=3)
    assert (rotation.a.shape[0], rotation.b.shape[0]) == factors and rotation.kind == kind
    dense = np.kron(rotation.a, rotation.b)
    np.testing.assert_allclose(dense @ dense.T, np.eye(n), atol=1e-12)  # the factors are orthonormal

    model, x, h = _graph_with_input(n)
    from_input = insert_kronecker_rotate(model, x, rotation, "from_input", "factors")  # x has no producer
    from_node = insert_kronecker_rotate(model, h, rotation, "from_node", "factors")  # h is an Identity output
    model.graph.outputs.extend([from_input, from_node])
    feeds = {"x": _input(n)}
    out = runtime.run(runtime.make_session(model), feeds)
    expected = _expected(feeds["x"], rotation.a, rotation.b)
    _assert_close(out[from_input.name], expected)
    _assert_close(out[from_node.name], expected)


def test_onnx_runtime_applies_general_factors_in_the_documented_orientation():
    """Non-orthogonal, non-symmetric, different-size factors: a transposed or swapped factor would show."""
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((3, 3)), rng.standard_normal((4, 4))
    model, _, h = _graph_with_input(12)
    y = insert_kronecker_rotate(model, h, Rotation(a, b, "test", 12), "general", "general")
    model.graph.outputs.append(y)
    feeds = {"x": _input(12, seed=6)}
    out = runtime.run(runtime.make_session(model), feeds)[y.name]
    expected = _expected(feeds["x"], a.astype(np.float32), b.astype(np.float32))
    _assert_close(out, expected)
    # and it is neither the swapped nor a transposed product
    for wrong in (_expected(feeds["x"], b, a), _expected(feeds["x"], a.T, b), _expected(feeds["x"], a, b.T)):
        assert np.abs(out - wrong).max() > 1e-2 * np.abs(expected).max()


@pytest.mark.parametrize(("a_size", "b_size"), [(1, 32), (12, 32), (3, 2), (4, 5)])
def test_numpy_reference_matches_dense_kronecker_product(a_size, b_size):
    rng = np.random.default_rng(a_size * 100 + b_size)
    a, b = rng.standard_normal((a_size, a_size)), rng.standard_normal((b_size, b_size))
    x = rng.standard_normal((2, 5, a_size * b_size))
    np.testing.assert_allclose(kronecker_rotate(x, a, b), x @ np.kron(a, b), rtol=1e-12, atol=1e-12)


def test_function_body_uses_only_standard_ops_and_the_model_passes_the_full_checker():
    model, x, h = _graph_with_input(384, opset=17)
    rotation = online_rotation(384, seed=0)
    model.graph.outputs.append(insert_kronecker_rotate(model, h, rotation, "rot", "rot"))
    del x

    (function,) = model.functions.values()
    assert (function.domain, function.name) == (DOMAIN, KRONECKER_ROTATE)
    assert len(function) > 0
    for node in function:
        assert node.domain in ("", "ai.onnx"), (node.op_type, node.domain)
        assert onnx.defs.has(node.op_type, ""), node.op_type
    assert model.opset_imports.get(DOMAIN) is not None

    proto = ir.serde.serialize_model(model)
    assert [(f.domain, f.name) for f in proto.functions] == [(DOMAIN, KRONECKER_ROTATE)]
    assert all(n.domain in ("", "ai.onnx") for n in proto.functions[0].node)
    assert any(n.op_type == KRONECKER_ROTATE and n.domain == DOMAIN for n in proto.graph.node)
    onnx.checker.check_model(proto, full_check=True)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)


def test_inserting_twice_adds_the_function_once_and_composes_the_rotations():
    rotation = online_rotation(6, seed=1)
    model, _, h = _graph_with_input(6)
    first = insert_kronecker_rotate(model, h, rotation, "first", "factors")
    second = insert_kronecker_rotate(model, first, rotation, "second", "factors")
    model.graph.outputs.append(second)
    assert len(model.functions) == 1
    rotates = [n for n in model.graph if n.op_type == KRONECKER_ROTATE]
    assert [n.name for n in rotates] == ["first_KroneckerRotate", "second_KroneckerRotate"]
    assert second.producer().inputs[0] is first  # inserted after the first one's node, in topological order
    feeds = {"x": _input(6, seed=2)}
    dense = np.kron(rotation.a, rotation.b)
    _assert_close(
        runtime.run(runtime.make_session(model), feeds)[second.name], feeds["x"].astype(np.float64) @ dense @ dense
    )


def test_same_factor_name_with_different_factors_gets_new_initializers():
    model, _, h = _graph_with_input(6)
    one, other = online_rotation(6, seed=1), online_rotation(6, seed=2)
    assert not np.allclose(one.a, other.a)
    y1 = insert_kronecker_rotate(model, h, one, "one", "factors")
    y2 = insert_kronecker_rotate(model, h, other, "other", "factors")
    model.graph.outputs.extend([y1, y2])
    assert y1.producer().inputs[1] is not y2.producer().inputs[1]
    feeds = {"x": _input(6, seed=4)}
    out = runtime.run(runtime.make_session(model), feeds)
    _assert_close(out[y1.name], _expected(feeds["x"], one.a, one.b))
    _assert_close(out[y2.name], _expected(feeds["x"], other.a, other.b))


@pytest.mark.parametrize("n", [32, 6])
def test_inserting_twice_reuses_the_factor_initializers(n):
    rotation = online_rotation(n, seed=1)
    model, x, h = _graph_with_input(n)
    first = insert_kronecker_rotate(model, h, rotation, "first", "factors")
    second = insert_kronecker_rotate(model, x, rotation, "second", "factors")
    assert first.producer().inputs[1] is second.producer().inputs[1]
    assert first.producer().inputs[2] is second.producer().inputs[2]
    assert sorted(model.graph.initializers) == ["factors_A", "factors_B"]


def test_rotating_a_graph_input_of_an_empty_graph():
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([2, 5, 32]))
    model = ir.Model(ir.Graph([x], [], nodes=[], opset_imports={"": 17}, name="empty"), ir_version=9)
    rotation = online_rotation(32)
    y = insert_kronecker_rotate(model, x, rotation, "rot", "rot")
    model.graph.outputs.append(y)
    feeds = {"x": _input(32)}
    _assert_close(
        runtime.run(runtime.make_session(model), feeds)[y.name], _expected(feeds["x"], rotation.a, rotation.b)
    )
