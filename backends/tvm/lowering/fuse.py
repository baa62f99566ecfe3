"""Backend-private node rewrites before import: fused GEMM epilogues and bounded integer MatMuls.

Fuse IntLinear → Requantize → Cast chains into one `qcompile.tvm.IntLinearRequantize` node:

    Cast(Requantize(IntLinear(x, w, bias), m, e, b, lo, hi), to)
        = clamp((x·w + bias)·m + b + r >> e, lo, hi)  as dtype `to`

is the GEMM with its requantize epilogue (`kernels/int_gemm.py`): the int32 accumulator never goes to
memory. The chain is fused only when each intermediate value has that single consumer and is not a
graph output; the node lives in a private domain that only the TVM importer understands. EXACT.

MatMuls that carry the lowering's operand bounds become `qcompile.tvm.IntMatMul` (the attributes carry
the bounds into the converter, which sees attributes but not metadata). EXACT.
"""

from __future__ import annotations

import onnx_ir as ir

from qcompile.intops.domain import DOMAIN

__all__ = ["fuse_linear_epilogues", "mark_bounded_matmuls", "FUSED_DOMAIN", "FUSED_LINEAR", "BOUNDED_MATMUL"]

FUSED_DOMAIN = "qcompile.tvm"
FUSED_LINEAR = "IntLinearRequantize"
BOUNDED_MATMUL = "IntMatMul"


def _sole_consumer(value: ir.Value, graph: ir.Graph, op_type: str, domain: str) -> ir.Node | None:
    if value.is_graph_output() or len(value.uses()) != 1:
        return None
    user = value.uses()[0].node
    return user if user.op_type == op_type and user.domain == domain and user.graph is graph else None


def mark_bounded_matmuls(model: ir.Model) -> int:
    """Integer MatMuls whose operand bounds the lowering recorded (`OPERAND_BOUNDS` metadata) become
    `qcompile.tvm.IntMatMul` nodes with attributes bound_a, bound_b; returns how many."""
    from qcompile.passes.lowering.act_matmul_rule import OPERAND_BOUNDS

    marked = 0
    for node in list(model.graph):
        text = node.metadata_props.get(OPERAND_BOUNDS) if node.op_type == "MatMul" and node.domain == "" else None
        if text is None:
            continue
        bound_a, bound_b = (int(part) for part in text.split(","))
        replacement = ir.Node(
            FUSED_DOMAIN, BOUNDED_MATMUL, list(node.inputs), [ir.AttrInt64("bound_a", bound_a), ir.AttrInt64("bound_b", bound_b)], num_outputs=1, name=node.name
        )
        ir.convenience.replace_nodes_and_values(model.graph, node, [node], [replacement], node.outputs, replacement.outputs)
        marked += 1
    model.opset_imports.setdefault(FUSED_DOMAIN, 1)
    return marked


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
        chain = [n for n in (linear, requant, cast) if n is not None]
        ir.convenience.replace_nodes_and_values(graph, last, chain, [node], last.outputs, node.outputs)
        fused += 1
    model.opset_imports.setdefault(FUSED_DOMAIN, 1)
    return fused
