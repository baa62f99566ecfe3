"""The IR facade: qcompile's graphs are `onnx_ir` models.

Everything that reads or mutates a model goes through `onnx_ir` (use-def safe, typed, ONNX op semantics);
this module re-exports the few names passes need and adds model-level helpers (copying, byte
serialization for ONNX Runtime, constant lookup) so pass code imports one place.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir import DataType, Graph, Model, Node, Tensor, Value, tensor

__all__ = [
    "ir",
    "DataType",
    "Graph",
    "Model",
    "Node",
    "Tensor",
    "Value",
    "tensor",
    "clone_model",
    "model_to_bytes",
    "const_array",
    "replace_const",
    "producer_op",
]


def model_to_bytes(model: Model) -> bytes:
    """Serialize a model (initializers included) to ONNX protobuf bytes."""
    return ir.serde.serialize_model(model).SerializeToString()


def clone_model(model: Model) -> Model:
    """Deep copy of a model through its protobuf form (metadata in `meta` is not copied)."""
    return ir.serde.deserialize_model(onnx.load_from_string(model_to_bytes(model)))


def const_array(value: Value | None):
    """The NumPy array of a constant value (initializer or Constant output), else None."""
    if value is None:
        return None
    tensor_ = ir.convenience.get_const_tensor(value)
    return None if tensor_ is None else tensor_.numpy()


def replace_const(value: Value, array) -> None:
    """Give the initializer `value` new contents `array`, cast to its current dtype (rewrites compute in
    float64 and store in the model's precision)."""
    dtype = value.const_value.numpy().dtype
    value.const_value = ir.tensor(np.asarray(array).astype(dtype), name=value.name)
    value.shape = ir.Shape(np.shape(array))


def producer_op(value: Value) -> str | None:
    """Op type of the node producing `value`, or None for graph inputs and initializers."""
    node = value.producer()
    return None if node is None else node.op_type
