"""Builds the integer graph: constants, standard nodes and `qcompile` kernel calls, in order.

The lowering writes a new node list next to the float graph; `Emitter` names every value uniquely
(prefix + counter), registers int constants as initializers and adds each kernel's ONNX function to the
model the first time it is called.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.intops.domain import DOMAIN
from qcompile.intops.kernels import add_kernel

__all__ = ["Emitter"]


class Emitter:
    """Appends nodes to `nodes` and initializers to `model.graph`."""

    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self.nodes: list[ir.Node] = []
        self._names: set[str] = {v.name for v in model.graph.initializers.values()}
        for node in model.graph:
            self._names.update(o.name for o in node.outputs)

    def _unique(self, name: str) -> str:
        candidate, index = name, 0
        while candidate in self._names:
            index += 1
            candidate = f"{name}_{index}"
        self._names.add(candidate)
        return candidate

    def const(self, name: str, array) -> ir.Value:
        """An initializer holding `array` (its dtype kept)."""
        array = np.asarray(array)
        name = self._unique(name)
        value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
        value.dtype, value.shape = ir.DataType.from_numpy(array.dtype), ir.Shape(array.shape)
        self.model.graph.register_initializer(value)
        return value

    def node(
        self, op: str, inputs: list[ir.Value], name: str, dtype: ir.DataType, domain: str = "", **attributes
    ) -> ir.Value:
        """One node with a single output of `dtype`, named `name` (made unique)."""
        output_name = self._unique(name)
        node = ir.node(op, inputs, attributes=attributes or None, domain=domain, name=f"{output_name}/{op}")
        node.outputs[0].name = output_name
        node.outputs[0].dtype = dtype
        self.nodes.append(node)
        return node.outputs[0]

    def kernel(self, kernel, inputs: list[ir.Value], name: str, dtype: ir.DataType = ir.DataType.INT64) -> ir.Value:
        """A call of the onnxscript function `kernel` (domain `qcompile`)."""
        return self.node(add_kernel(self.model, kernel), inputs, name, dtype, domain=DOMAIN)

    def cast(self, value: ir.Value, dtype: ir.DataType, name: str) -> ir.Value:
        if value.dtype == dtype:
            return value
        return self.node("Cast", [value], name, dtype, to=int(dtype))
