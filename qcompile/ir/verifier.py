"""Structural verification of a model: what every pass must leave true.

* SSA: every value is produced once, names are unique, node outputs are named.
* Use-def order: each node input is a graph input, an initializer, or the output of an earlier node
  (so the node list is a topological order), and every graph output is produced.
* Types: graph inputs and outputs carry an element type.
* Quantization facts are complete: a `QuantSpec`'s per-channel axis fits the value's rank and its scale
  has one entry per channel.
"""

from __future__ import annotations

from onnx_ir import Model, Value

from qcompile.errors import PassFailure
from qcompile.ir import quant_meta

__all__ = ["VerificationError", "verify_model"]


class VerificationError(PassFailure):
    """The model violates an IR invariant; the message names the node or value."""


def _check_quant_spec(value: Value) -> None:
    spec = quant_meta.get_quant(value)
    if spec is None or spec.axis is None:
        return
    shape = value.shape
    if shape is None:
        if value.const_value is None and spec.axis == -1:
            return  # the last axis: exists at any rank, its length is unknown
        if value.const_value is None:
            raise VerificationError(f"per-channel quantizer on '{value.name}' but its shape is unknown")
        shape = value.const_value.shape
    rank = len(shape)
    if not -rank <= spec.axis < rank:
        raise VerificationError(f"quantizer axis {spec.axis} out of range for '{value.name}' of rank {rank}")
    if spec.group_size is not None:
        expected = list(shape)
        if isinstance(expected[spec.axis], int):
            expected[spec.axis] = -(-expected[spec.axis] // spec.group_size)  # ⌈K / G⌉: the last group may be shorter
        if len(expected) != spec.scale.ndim or any(
            isinstance(d, int) and d != s for d, s in zip(expected, spec.scale.shape, strict=True)
        ):
            raise VerificationError(
                f"per-group quantizer of '{value.name}' (group {spec.group_size}, axis {spec.axis}) has scales of "
                f"shape {spec.scale.shape} for shape {tuple(shape)}"
            )
        return
    channels = shape[spec.axis]
    if isinstance(channels, int) and spec.scale.shape != (channels,):
        raise VerificationError(f"quantizer of '{value.name}' has {spec.scale.shape[0]} scales for {channels} channels")


def verify_model(model: Model) -> None:
    """Raise `VerificationError` naming the first broken invariant of `model`'s main graph."""
    graph = model.graph
    available: set[int] = set()
    names: dict[str, str] = {}

    def define(value: Value, where: str) -> None:
        if not value.name:
            raise VerificationError(f"{where} has an unnamed output")
        if value.name in names:
            raise VerificationError(f"value name '{value.name}' defined twice ({names[value.name]} and {where})")
        names[value.name] = where
        available.add(id(value))
        _check_quant_spec(value)

    for value in graph.inputs:
        if value.dtype is None:
            raise VerificationError(f"graph input '{value.name}' has no element type")
        define(value, f"graph input '{value.name}'")
    for name, value in graph.initializers.items():
        if id(value) in available:
            continue  # an initializer that is also a graph input
        if value.const_value is None:
            raise VerificationError(f"initializer '{name}' has no tensor")
        define(value, f"initializer '{name}'")
    for node in graph:
        for index, value in enumerate(node.inputs):
            if value is None or id(value) in available:
                continue
            if value.producer() is None:
                raise VerificationError(
                    f"node '{node.name}' ({node.op_type}) input {index} '{value.name}' is not produced by "
                    "any node, graph input or initializer"
                )
            raise VerificationError(
                f"node '{node.name}' ({node.op_type}) uses '{value.name}' before it is produced "
                "(nodes are not in topological order)"
            )
        for value in node.outputs:
            define(value, f"node '{node.name}' ({node.op_type})")
    for value in graph.outputs:
        if id(value) not in available:
            raise VerificationError(f"graph output '{value.name}' is not produced")
        if value.dtype is None:
            raise VerificationError(f"graph output '{value.name}' has no element type")
