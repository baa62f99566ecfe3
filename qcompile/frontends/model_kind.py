"""What kind of transformer a graph is, where passes or recipes behave differently.

A **decoder LLM** (causal language model) here is a graph with an int64 token input of rank 2
[batch, sequence], an output of rank 3 [batch, sequence, V], and an embedding `Gather(table[V, d], ids)`
along axis 0 with the same V: token ids in, next-token logits over the embedding's vocabulary out.
(A masked LM has the same signature; per-token activation quantizers suit it too.)
"""

from __future__ import annotations

import onnx_ir as ir

__all__ = ["is_decoder_llm"]


def _rank(value: ir.Value) -> int | None:
    return len(value.shape) if value.shape is not None else None


def is_decoder_llm(model: ir.Model) -> bool:
    """True when `model` has a language model's signature (module docstring)."""
    graph = model.graph
    if not any(v.dtype == ir.DataType.INT64 and _rank(v) == 2 for v in graph.inputs):
        return False
    vocabularies = {
        v.shape[2] for v in graph.outputs if _rank(v) == 3 and isinstance(v.shape[2], int) and v.shape[2] > 1
    }
    for node in graph:
        if node.op_type != "Gather" or node.attributes.get_int("axis", 0) != 0:
            continue
        table = node.inputs[0]
        if table is not None and table.const_value is not None and len(table.const_value.shape) == 2:
            if table.const_value.shape[0] in vocabularies:
                return True
    return False
