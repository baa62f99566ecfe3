"""Online Kronecker transforms: `qcompile.KroneckerRotate` and `qcompile.KroneckerAffine`, model-local ONNX
functions with one standard-op body.

For x [..., n] and factors A [a, a], B [b, b] with n = a·b, the function computes y = x · (A ⊗ B) over the
last axis without forming the n×n matrix:

    X = reshape(x, [−1, a, b]);   y[m, i, j] = Σ_{k,l} X[m, k, l] A[k, i] B[l, j] = (Aᵀ X_m B)[i, j]

as MatMul(X, B) → Transpose(0, 2, 1) → MatMul(·, A) → Transpose(0, 2, 1) → reshape to x's shape:
n·(a + b) multiply-adds per row instead of n². With A, B orthonormal Hadamard factors (or a random
orthogonal A where no Hadamard of order a exists, `qcompile.math.hadamard`) this is QuaRot's online
Hadamard transform; `KroneckerAffine` is the same body under the name FlatQuant's learned, invertible (not
orthogonal) factors use, so reports and backends can tell them apart. Body ops (opset 13+): Shape,
Constant, Slice, Concat, Reshape, MatMul, Transpose. ONNX Runtime inlines the function; `kronecker_rotate` is
the NumPy reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from qcompile.math.hadamard import Rotation

__all__ = [
    "DOMAIN",
    "KRONECKER_AFFINE",
    "KRONECKER_ROTATE",
    "kronecker_rotate",
    "kronecker_function",
    "insert_after",
    "insert_kronecker",
    "insert_kronecker_rotate",
]

DOMAIN = "qcompile"
KRONECKER_ROTATE = "KroneckerRotate"
KRONECKER_AFFINE = "KroneckerAffine"
FUNCTION_OPSET = 13


def kronecker_rotate(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """NumPy reference: x · (a ⊗ b) over the last axis."""
    shape = x.shape
    grid = x.reshape(-1, a.shape[0], b.shape[0])
    return np.einsum("mkl,ki,lj->mij", grid, a, b).reshape(shape)


def _node(nodes: list[ir.Node], op: str, inputs: list[ir.Value], name: str, **attributes) -> ir.Value:
    node = ir.node(op, inputs, attributes=attributes or None, name=f"{name}_{op}")
    node.outputs[0].name = name
    nodes.append(node)
    return node.outputs[0]


def kronecker_function(opset: int = FUNCTION_OPSET, name: str = KRONECKER_ROTATE) -> ir.Function:
    """The `qcompile.<name>(x, A, B) -> y` function definition (y = x·(A ⊗ B))."""
    x, a, b = ir.Value(name="x"), ir.Value(name="A"), ir.Value(name="B")
    nodes: list[ir.Node] = []

    def const(name: str, values: list[int]) -> ir.Value:
        return _node(nodes, "Constant", [], name, value=ir.tensor(np.array(values, dtype=np.int64), name=name))

    first = const("first", [0])
    one = const("one", [1])
    a_size = _node(nodes, "Slice", [_node(nodes, "Shape", [a], "a_shape"), first, one], "a_size")
    b_size = _node(nodes, "Slice", [_node(nodes, "Shape", [b], "b_shape"), first, one], "b_size")
    grid_shape = _node(nodes, "Concat", [const("rows", [-1]), a_size, b_size], "grid_shape", axis=0)
    grid = _node(nodes, "Reshape", [x, grid_shape], "grid")
    right = _node(nodes, "MatMul", [grid, b], "right")
    swapped = _node(nodes, "Transpose", [right], "swapped", perm=[0, 2, 1])
    left = _node(nodes, "MatMul", [swapped, a], "left")
    back = _node(nodes, "Transpose", [left], "back", perm=[0, 2, 1])
    y = _node(nodes, "Reshape", [back, _node(nodes, "Shape", [x], "x_shape")], "y")
    graph = ir.Graph([x, a, b], [y], nodes=nodes, opset_imports={"": opset}, name=name)
    return ir.Function(DOMAIN, name, graph=graph, attributes=[])


def _ensure_function(model: ir.Model, name: str) -> None:
    opset = max(model.opset_imports.get("", FUNCTION_OPSET), FUNCTION_OPSET)
    function = kronecker_function(opset, name)
    if function.identifier() not in model.functions:
        model.functions[function.identifier()] = function
    model.opset_imports.setdefault(DOMAIN, 1)


def _initializer(model: ir.Model, name: str, array: np.ndarray) -> ir.Value:
    array = np.asarray(array, dtype=np.float32)
    existing = model.graph.initializers.get(name)
    if existing is not None and np.array_equal(existing.const_value.numpy(), array):
        return existing
    while name in model.graph.initializers:
        name += "_"
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    value.dtype, value.shape = ir.DataType.FLOAT, ir.Shape(array.shape)
    model.graph.register_initializer(value)
    return value


def insert_kronecker_rotate(model: ir.Model, x: ir.Value, rotation: Rotation, name: str, factor_name: str) -> ir.Value:
    """Insert y = KroneckerRotate(x, A, B) after x's producer; returns y (x's consumers are not rewired).

    The factors are initializers named `{factor_name}_A/_B`, shared by every call with the same name.
    """
    return insert_kronecker(model, x, rotation.a, rotation.b, name, factor_name, KRONECKER_ROTATE, "rotated")


def insert_kronecker(
    model: ir.Model,
    x: ir.Value,
    a: np.ndarray,
    b: np.ndarray,
    name: str,
    factor_name: str,
    op_type: str = KRONECKER_AFFINE,
    suffix: str = "transformed",
) -> ir.Value:
    """Insert y = <op_type>(x, A, B) = x·(A ⊗ B) after x's producer; returns y (consumers not rewired)."""
    _ensure_function(model, op_type)
    a = _initializer(model, f"{factor_name}_A", a)
    b = _initializer(model, f"{factor_name}_B", b)
    taken = {n.name for n in model.graph}
    while f"{name}_{op_type}" in taken:  # a second transform of the same site gets its own names
        name += "_"
    node = ir.node(op_type, [x, a, b], domain=DOMAIN, name=f"{name}_{op_type}")
    node.outputs[0].name = f"{name}_{suffix}"
    node.outputs[0].dtype = x.dtype or ir.DataType.FLOAT
    node.outputs[0].shape = x.shape
    insert_after(model, x.producer(), node)
    return node.outputs[0]


def insert_after(model: ir.Model, producer: ir.Node | None, node: ir.Node | Sequence[ir.Node]) -> None:
    """Put `node` (or nodes, in order) right after `producer`, or first in the graph when its input is a graph
    input (None)."""
    if producer is not None:
        model.graph.insert_after(producer, node)
    elif len(model.graph):
        model.graph.insert_before(model.graph.node(0), node)
    else:
        model.graph.extend([node] if isinstance(node, ir.Node) else node)
