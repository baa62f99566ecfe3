"""Blocks of a pre-norm residual stream, run one at a time: the data path of layer-wise (sequential) GPTQ.

A pre-norm transformer's residual stream (`residual_stream.find_stream`) is a chain
s₀ → s₁ → … → s_m with s_{i+1} = s_i + writer_i(norm_i(s_i)): every attention and every MLP is one
**block** from s_i to s_{i+1}, and the **head** block runs from s_m to the graph outputs (final norm, LM head).
s₀ is the origin (the embedding output). Side values that depend only on the graph inputs (RoPE's cos/sin,
the causal mask) are recomputed inside each block from the graph inputs.

`block_model(model, cut, outputs)` is the sub-model of the nodes between the cut values (which become graph
inputs, with the original graph inputs) and `outputs`, serialized from the IR as it stands (current weights).
Sequential GPTQ (`gptq_weights`) keeps s_i of every calibration batch in memory, runs block i to collect its
linears' Hessians, rounds them, then runs block i again with the rounded weights to get s_{i+1}: each layer's
Hessians see the outputs of the already quantized layers before it, as GPTQ and QuaRot run it.
"""

from __future__ import annotations

import dataclasses

import onnx
import onnx_ir as ir

from qcompile.passes.transforms.residual_stream import find_stream

__all__ = ["StreamBlock", "stream_blocks", "block_nodes", "block_model"]


@dataclasses.dataclass
class StreamBlock:
    """From stream value `start` to `end` (None: to the graph outputs, the head)."""

    start: ir.Value
    end: ir.Value | None


def stream_blocks(model: ir.Model) -> list[StreamBlock] | str:
    """The blocks of `model`'s pre-norm residual stream in order, or why there are none."""
    stream = find_stream(model.graph)
    if isinstance(stream, str):
        return stream
    following: dict[int, ir.Value] = {}
    for writer in stream.writers:
        (use,) = writer.output.uses()
        add = use.node
        trunk = add.inputs[1 - use.idx]
        following[id(trunk)] = add.outputs[0]
    blocks, value = [], stream.origin
    while id(value) in following:
        blocks.append(StreamBlock(value, following[id(value)]))
        value = following[id(value)]
    if len(blocks) != len(stream.writers):
        return f"the stream's {len(stream.writers)} residual adds do not form one chain from the origin"
    blocks.append(StreamBlock(value, None))
    return blocks


def block_nodes(model: ir.Model, cut: list[ir.Value], outputs: list[ir.Value]) -> list[ir.Node] | str:
    """Nodes computing `outputs` from `cut` and the graph inputs, in graph order; or why it cannot be cut
    (a node with a subgraph attribute, whose captured values a backward walk does not see)."""
    stop = {id(v) for v in cut}
    seen: set[int] = set()
    stack = list(outputs)
    while stack:
        value = stack.pop()
        if id(value) in stop:
            continue
        node = value.producer()
        if node is None or id(node) in seen:
            continue
        if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
            return f"node '{node.name}' ({node.op_type}) has a subgraph"
        seen.add(id(node))
        stack.extend(v for v in node.inputs if v is not None)
    return [node for node in model.graph if id(node) in seen]


def _value_info(value: ir.Value) -> onnx.ValueInfoProto:
    proto = onnx.ValueInfoProto()
    ir.serde.serialize_value_into(proto, value)
    return proto


def block_model(model: ir.Model, cut: list[ir.Value], outputs: list[ir.Value]) -> onnx.ModelProto | str:
    """The sub-model from `cut` (+ the graph inputs it reads) to `outputs`, with the current initializers."""
    nodes = block_nodes(model, cut, outputs)
    if isinstance(nodes, str):
        return nodes
    produced = {id(o) for node in nodes for o in node.outputs}
    read: dict[int, ir.Value] = {}
    for node in nodes:
        for value in node.inputs:
            if value is not None and id(value) not in produced:
                read[id(value)] = value
    for value in outputs:  # an output may be a cut value itself
        if id(value) not in produced:
            read[id(value)] = value
    inputs = [v for v in [*cut, *model.graph.inputs] if id(v) in read]
    input_ids = {id(v) for v in inputs}
    initializers = []
    for value in read.values():
        if id(value) in input_ids:
            continue
        if value.const_value is None:
            return f"value '{value.name}' is neither computed in the block, a cut value, an input nor a constant"
        initializers.append(ir.serde.serialize_tensor(value.const_value))
        initializers[-1].name = value.name
    graph = onnx.helper.make_graph(
        [ir.serde.serialize_node(node) for node in nodes],
        "block",
        [_value_info(v) for v in inputs],
        [_value_info(v) for v in outputs],
        initializers,
    )
    opsets = [onnx.helper.make_opsetid(domain, version) for domain, version in model.opset_imports.items()]
    proto = onnx.helper.make_model(graph, opset_imports=opsets, ir_version=model.ir_version)
    proto.functions.extend(ir.serde.serialize_function(f) for f in model.functions.values())
    return proto
