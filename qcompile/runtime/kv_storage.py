"""A quantized KV cache stored as codes with their scales (`to_qdq(..., kv_storage=True)`, the artifact's form).

`kv-quant` gives the new keys/values k [B, H, T, D] entering a layer's cache a per-token quantizer (one scale and
zero point per batch, head and token). By default the export fake-quantizes k and the cache holds float32
values on that grid. In the storage form the cache holds the quantizer's output itself:

    inputs   past_key_values.{i}.key              uint8 (asymmetric) / int8 (symmetric) codes [B, H, P, D]
             past_key_values.{i}.key_scale        float32 [B, H, P, 1]
             past_key_values.{i}.key_zero_point   float32 [B, H, P, 1]        (asymmetric only)
    outputs  present.{i}.key, present.{i}.key_scale, present.{i}.key_zero_point   (P + T along axis 2)

    codes' = Concat(past codes, codes(k)),  scale' = Concat(past scales, s(k)),  zero' = Concat(…, z(k))
    K̂ = (Cast(codes', float) − zero') · scale'       what the attention reads

(likewise for values). K̂ equals the fake-quantized form exactly (the same ops on the same codes), so the
numerics do not change: only the interface and the cache's size do (4-bit codes sit in 8-bit containers, not
packed: one byte per element plus 8 bytes of scale and zero point per head and token, against 4 bytes per
element in float32). A prefill feeds empty codes and scales; a decode step the previous presents, as before.

Only a cache Concat that reads its past input directly is stored this way; one behind an intact-kv prefix
keeps the float form (the prefix is float and would need its own codes).
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir as ir

from qcompile.ir.cache_state import PAST_PREFIX, PRESENT_PREFIX
from qcompile.ir.quant_meta import QuantSpec

__all__ = ["store_quantized_cache"]


def _site(graph: ir.Graph, value: ir.Value) -> tuple[ir.Node, ir.Value, ir.Value] | None:
    """(cache Concat, past input, present output) when `value` is the new half of a layer's cache update."""
    uses = list(value.uses())
    if len(uses) != 1 or uses[0].node.op_type != "Concat" or uses[0].idx != 1 or len(uses[0].node.inputs) != 2:
        return None
    concat = uses[0].node
    past, present = concat.inputs[0], concat.outputs[0]
    inputs, outputs = {id(v) for v in graph.inputs}, {id(v) for v in graph.outputs}
    if id(past) not in inputs or not (past.name or "").startswith(PAST_PREFIX):
        return None
    if id(present) not in outputs or not (present.name or "").startswith(PRESENT_PREFIX):
        return None
    return concat, past, present


def _input(graph: ir.Graph, name: str, like: ir.Value) -> ir.Value:
    shape = like.shape
    value = ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT))
    value.shape = ir.Shape([shape[0], shape[1], shape[2], 1]) if shape is not None and len(shape) == 4 else None
    graph.inputs.append(value)
    return value


def store_quantized_cache(graph: ir.Graph, value: ir.Value, spec: QuantSpec, opset: int, token_ops: Callable) -> bool:
    """Write `value`'s per-token quantizer in the storage form (module docstring); False if `value` is not the
    new half of a cache update (then the caller writes the usual fake-quantization)."""
    site = _site(graph, value)
    if site is None:
        return False
    concat, past, present = site
    axis = concat.attributes.get_int("axis", 2)
    nodes, codes, scale, zero_point, _ = token_ops(graph, value, spec, opset)
    code_type = ir.DataType.INT8 if spec.signed else ir.DataType.UINT8
    past.type = ir.TensorType(code_type)
    parts = [(past, codes)]
    scale_input = _input(graph, f"{past.name}_scale", past)
    parts.append((scale_input, scale))
    if zero_point is not None:
        parts.append((_input(graph, f"{past.name}_zero_point", past), zero_point))
    joined = []
    for old, new in parts:
        node = ir.node("Concat", [old, new], attributes={"axis": axis}, name=f"{new.name}_cache_concat")
        node.outputs[0].name = f"{new.name}_cache"
        node.outputs[0].dtype = old.dtype
        nodes.append(node)
        joined.append(node.outputs[0])
    codes_all, scale_all = joined[0], joined[1]
    as_float = ir.node("Cast", [codes_all], attributes={"to": ir.DataType.FLOAT}, name=f"{present.name}_codes_float")
    centered = as_float.outputs[0]
    nodes.append(as_float)
    if zero_point is not None:
        sub = ir.node("Sub", [centered, joined[2]], name=f"{present.name}_centered")
        nodes.append(sub)
        centered = sub.outputs[0]
    dequantize = ir.node("Mul", [centered, scale_all], name=f"{present.name}_dequantized")
    nodes.append(dequantize)
    readers = [u for u in present.uses()]
    for use in readers:
        use.node.replace_input_with(use.idx, dequantize.outputs[0])
    index = next(i for i, v in enumerate(graph.outputs) if v is present)
    name = present.name
    present.name = f"{name}_float"
    codes_all.name = name
    graph.outputs[index] = codes_all
    graph.outputs.append(scale_all)
    scale_all.name = f"{name}_scale"
    if zero_point is not None:
        joined[2].name = f"{name}_zero_point"
        graph.outputs.append(joined[2])
    graph.insert_after(concat, nodes)
    if not present.uses():
        graph.remove(concat, safe=True)
    return True
