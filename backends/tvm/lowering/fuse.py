"""Fuse IntLinear → Requantize → Cast chains into one `qcompile.tvm.IntLinearRequantize` node.

    Cast(Requantize(IntLinear(x, w, bias), m, e, b, lo, hi), to)
        = clamp((x·w + bias)·m + b + r >> e, lo, hi)  as dtype `to`

is the GEMM with its requantize epilogue (`kernels/int_gemm.py`): the int32 accumulator never goes to
memory. The chain is fused only when each intermediate value has that single consumer and is not a
graph output; the node lives in a private domain that only the TVM importer understands. EXACT.
"""

from __future__ import annotations

import onnx_ir as ir

from qcompile.intops.domain import DOMAIN

__all__ = ["fuse_linear_epilogues", "FUSED_DOMAIN", "FUSED_LINEAR"]

FUSED_DOMAIN = "qcompile.tvm"
FUSED_LINEAR = "IntLinearRequantize"


def _sole_consumer(value: ir.Value, graph: ir.Graph, op_type: str, domain: str) -> ir.Node | None:
    if value.is_graph_output() or len(value.uses()) != 1:
        return None
    user = value.uses()[0].node
    return user if user.op_type == op_type and user.domain == domain and user.graph is graph else None


def fuse_linear_epilogues(model: ir.Model) -> int:
    """Rewrite the chains in place; returns how many were fused."""
    graph = model.graph
    fused = 0
    for linear in [n for n in graph if n.op_type == "IntLinear" and n.domain == DOMAIN]:
        requant = _sole_consumer(linear.outputs[0], graph, "Requantize", DOMAIN)
        if requant is None or requant.inputs[0] is not linear.outputs[0]:
            continue
        cast = _sole_consumer(requant.outputs[0], graph, "Cast", "")
        attributes = [ir.AttrInt64("to", cast.attributes["to"].as_int())] if cast is not None else []
        last = cast if cast is not None else requant
        node = ir.Node(
            FUSED_DOMAIN, FUSED_LINEAR, [*linear.inputs, *requant.inputs[1:]], attributes, num_outputs=1, name=linear.name
        )
        graph.insert_before(linear, node)
        output = last.outputs[0]
        node.outputs[0].name, node.outputs[0].shape, node.outputs[0].type = None, output.shape, output.type
        ir.convenience.replace_all_uses_with(output, node.outputs[0], replace_graph_outputs=True)
        name = output.name
        graph.remove([n for n in (linear, requant, cast) if n is not None], safe=True)
        node.outputs[0].name = name
        fused += 1
    model.opset_imports.setdefault(FUSED_DOMAIN, 1)
    return fused
