"""Small structural questions the lowering rules ask of a node's neighbourhood."""

from __future__ import annotations

import onnx_ir as ir

from qcompile.ir import const_array

__all__ = ["scalar_constant", "other_input", "only_use"]


def scalar_constant(value: ir.Value | None) -> float | None:
    """The value of a one-element constant (initializer or Constant node), else None."""
    array = const_array(value)
    return None if array is None or array.size != 1 else float(array.reshape(()))


def other_input(node: ir.Node, value: ir.Value) -> ir.Value:
    """The input of a two-input node that is not `value`."""
    return node.inputs[1] if node.inputs[0] is value else node.inputs[0]


def only_use(value: ir.Value, op_type: str) -> ir.Node | None:
    """The node reading `value`, when it is its only reader and of `op_type`."""
    uses = list(value.uses())
    return uses[0].node if len(uses) == 1 and uses[0].node.op_type == op_type else None
