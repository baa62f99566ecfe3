"""The IR facade: qcompile's graphs are `onnx_ir` models.

Everything that reads or mutates a model goes through `onnx_ir` (use-def safe, typed, ONNX op semantics);
this module re-exports the few names passes need and adds model-level helpers (copying, byte
serialization for ONNX Runtime, constant lookup) so pass code imports one place.
"""

from __future__ import annotations

import os
from pathlib import Path

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
    "initializer_bytes",
    "is_large",
    "PROTO_LIMIT",
    "inline_external_tensors",
    "model_to_bytes",
    "const_array",
    "replace_const",
    "add_initializer",
    "producer_op",
]


def _graph_tensors(graph: Graph):
    """(tensor, setter) for every initializer and tensor attribute of `graph` and its subgraphs."""
    for value in graph.initializers.values():
        yield value.const_value, lambda tensor, value=value: setattr(value, "const_value", tensor)
    for node in graph:
        for name, attribute in list(node.attributes.items()):
            if attribute.type == ir.AttributeType.TENSOR:
                yield (
                    attribute.value,
                    lambda tensor, node=node, name=name: node.attributes.__setitem__(name, ir.AttrTensor(name, tensor)),
                )
            elif attribute.type == ir.AttributeType.GRAPH:
                yield from _graph_tensors(attribute.value)
            elif attribute.type == ir.AttributeType.GRAPHS:
                for subgraph in attribute.value:
                    yield from _graph_tensors(subgraph)


def inline_external_tensors(model: Model) -> None:
    """Read every tensor that still refers to an external file into memory, in place, under the rule of
    `qcompile.frontends.external_data`: the file must lie, after symlinks, inside the tensor's base folder.

    `qcompile.load` already inlines; this covers models built or loaded by other means (`onnx_ir.load`),
    whose references would otherwise be resolved against the working directory once serialized."""
    from qcompile.errors import InputError
    from qcompile.frontends.external_data import contained_file

    for held, replace in list(_graph_tensors(model.graph)):
        if not isinstance(held, ir.ExternalTensor):
            continue
        where = f"tensor '{held.name}'"
        if not held.base_dir:
            raise InputError(f"{where}: external data {held.location!r} has no base folder to resolve it against")
        folder = Path(os.path.realpath(held.base_dir))
        contained_file(str(held.location), folder, None, where)
        replace(ir.Tensor(held.numpy(), name=held.name))


PROTO_LIMIT = 1_800_000_000
"""Bytes of initializer data above which a model is never serialized whole (protobuf's hard limit is
2 GB): `clone_model` copies it as an object graph, and ONNX Runtime sessions receive its initializers
from memory (`qcompile.runtime.session_source`)."""


def initializer_bytes(model: Model) -> int:
    """Bytes of the main graph's initializer data."""
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def is_large(model: Model) -> bool:
    """Whether the model's initializers exceed `PROTO_LIMIT`."""
    return initializer_bytes(model) > PROTO_LIMIT


def model_to_bytes(model: Model) -> bytes:
    """Serialize a model (initializers included) to ONNX protobuf bytes; external tensors are inlined."""
    inline_external_tensors(model)
    if is_large(model):
        from qcompile.errors import InputError

        raise InputError(
            f"the model's {initializer_bytes(model) / 2**30:.1f} GiB of tensors do not fit one protobuf (2 GB); save "
            f"it with external data"
        )
    return ir.serde.serialize_model(model).SerializeToString()


def clone_model(model: Model) -> Model:
    """Deep copy of a model (metadata in `meta` is not copied); external tensors are inlined first, so the
    copy never resolves a path. Through the protobuf form, or for a large model (`is_large`) as an object
    graph sharing the immutable tensors."""
    inline_external_tensors(model)
    if is_large(model):
        copy = model.clone()
        for value in _all_values(copy.graph):
            value.meta.clear()
        return copy
    return ir.serde.deserialize_model(onnx.load_from_string(model_to_bytes(model)))


def _all_values(graph: Graph):
    yield from graph.inputs
    yield from graph.initializers.values()
    for node in ir.traversal.RecursiveGraphIterator(graph):
        yield from node.outputs


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


def add_initializer(model: Model, name: str, array: np.ndarray) -> Value:
    """Register `array` (its dtype kept) as a new initializer named `name`, or `name_`, `name__`… if taken."""
    while name in model.graph.initializers:
        name += "_"
    array = np.ascontiguousarray(array)
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    value.dtype, value.shape = ir.DataType.from_numpy(array.dtype), ir.Shape(array.shape)
    model.graph.register_initializer(value)
    return value


def producer_op(value: Value) -> str | None:
    """Op type of the node producing `value`, or None for graph inputs and initializers."""
    node = value.producer()
    return None if node is None else node.op_type
