"""Untie weights a linear reads through a transpose: `MatMul(x, Transpose(E))` → `MatMul(x, Eᵀ)`.

Tied embeddings (Llama, SmolLM2, GPT-2) are exported as one table E[V, d] read twice: by the embedding
`Gather(E, ids)` and by the LM head `MatMul(h, Transpose(E, perm=[1, 0]))`. Passes that fold per-channel
factors or rotations into a linear's weight (rotate, smooth) need the head's weight to be a constant of its
own: this stores Eᵀ as a new initializer for each such MatMul/Gemm (E itself is left to its other readers;
the Transpose is removed once nothing reads it). Exact: the head computes the same product.
"""

from __future__ import annotations

import onnx_ir as ir

from qcompile.ir import add_initializer

__all__ = ["untie_transposed_weights"]


def untie_transposed_weights(model: ir.Model) -> list[str]:
    """Replace every linear weight computed as Transpose(constant 2-D) by a constant; returns the linears."""
    untied = []
    for node in list(model.graph):
        if node.op_type not in ("MatMul", "Gemm") or len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        transpose = node.inputs[1].producer()
        if transpose is None or transpose.op_type != "Transpose" or transpose.graph is not model.graph:
            continue
        table = transpose.inputs[0]
        perm = transpose.attributes.get_ints("perm", None)
        if table is None or table.const_value is None or len(table.const_value.shape) != 2:
            continue
        if perm is not None and list(perm) != [1, 0]:
            continue
        weight = add_initializer(model, f"{table.name}_transposed", table.const_value.numpy().T)
        node.replace_input_with(1, weight)
        untied.append(node.name)
        if not transpose.outputs[0].uses():
            model.graph.remove(transpose, safe=True)
    return untied
