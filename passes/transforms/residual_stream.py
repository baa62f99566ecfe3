"""The residual stream of a transformer as exporters write it: norms, residual adds, writers, origin.

* A **norm** is a LayerNorm or (with `rms=True`) an RMSNorm as `qcompile.ir.norms` recognizes it (re-exported
  here: `Norm`, `find_norms`, `rms_norm_at`).
* A **writer** is a linear branch added to the stream: `MatMul(h, W[K, d])`, with or without `Add(b)`,
  optionally followed by a per-channel `Mul(λ)` (DINOv2's LayerScale), each value used once.
* A **residual add** is `Add(trunk, writer)` whose output feeds a norm.
* The **stream** (pre-LN only) is found by walking back from every norm input through residual adds to
  the trunk: the stream values, the writers, and one **origin** (the embedding output) where the walk
  stops. It is pre-LN when no stream value is a norm output and every use of a stream value is a norm
  or a residual add; otherwise `find_stream` says why not (post-LN BERT feeds the LN output back into the
  stream, so its norms cannot become weightless RMS norms). All norms of a stream are of one kind
  (`Stream.rms`): LayerNorms, or RMSNorms.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from qcompile.ir.norms import Norm, const_vector, find_norms, other_input, producer, rms_norm_at

__all__ = ["Norm", "Writer", "Stream", "find_norms", "find_writers", "find_stream", "rms_norm_at"]


@dataclasses.dataclass
class Writer:
    matmul: ir.Node
    weight: ir.Value
    bias: ir.Value | None  # None: a linear without bias (Llama)
    scale_mul: ir.Node | None  # LayerScale Mul(·, λ)
    scale: ir.Value | None
    output: ir.Value  # what the residual add reads


@dataclasses.dataclass
class Stream:
    origin: ir.Value
    values: list[ir.Value]
    writers: list[Writer]
    norms: list[Norm]
    width: int
    rms: bool = False  # the norms are RMSNorms (no mean removal)


def _writer(value: ir.Value) -> Writer | None:
    """The linear branch producing `value`, if it is one."""
    if value is None or len(value.uses()) != 1:
        return None
    scale_mul, scale = None, None
    node = value.producer()
    if node is not None and node.op_type == "Mul":
        for inner in node.inputs:
            if inner is not None and inner.const_value is None and const_vector(other_input(node, inner)):
                scale_mul, scale, value = node, other_input(node, inner), inner
                break
        else:
            return None
        if len(value.uses()) != 1 or len(scale.uses()) != 1:
            return None
        node = value.producer()
    if node is not None and node.op_type == "MatMul":  # no bias
        weight = node.inputs[1]
        if weight is None or weight.const_value is None or len(weight.const_value.shape) != 2:
            return None
        if len(weight.uses()) != 1 or node.inputs[0] is None or node.inputs[0].const_value is not None:
            return None
        return Writer(node, weight, None, scale_mul, scale, scale_mul.outputs[0] if scale_mul else node.outputs[0])
    if node is None or node.op_type != "Add":
        return None
    for mm_value in node.inputs:
        matmul = producer(mm_value, "MatMul")
        bias = other_input(node, mm_value) if matmul is not None else None
        if matmul is None or not const_vector(bias) or len(mm_value.uses()) != 1 or len(bias.uses()) != 1:
            continue
        weight = matmul.inputs[1]
        if (
            weight is None
            or weight.const_value is None
            or len(weight.const_value.shape) != 2
            or len(weight.uses()) != 1
        ):
            return None
        if weight.const_value.shape[1] != bias.const_value.shape[0]:
            return None
        return Writer(matmul, weight, bias, scale_mul, scale, scale_mul.outputs[0] if scale_mul else node.outputs[0])
    return None


def _residual_add(value: ir.Value | None) -> tuple[ir.Value, Writer] | None:
    """(trunk, writer) when `value` is Add(trunk, writer), else None."""
    node = value.producer() if value is not None else None
    if node is None or node.op_type != "Add":
        return None
    if any(v is None or v.const_value is not None for v in node.inputs):
        return None
    writers = [(other_input(node, v), _writer(v)) for v in node.inputs]
    found = [(trunk, w) for trunk, w in writers if w is not None]
    return found[0] if len(found) == 1 else None


def find_writers(graph: ir.Graph, rms: bool = False) -> list[Writer]:
    """Writers of every residual add that feeds a norm (pre-LN or post-LN; `rms`: RMSNorms count)."""
    writers = []
    for norm in find_norms(graph, rms=rms):
        found = _residual_add(norm.input)
        if found is not None:
            writers.append(found[1])
    return writers


def find_stream(graph: ir.Graph) -> Stream | str:
    """The pre-LN residual stream of `graph` (LayerNorms or RMSNorms), or the reason there is none."""
    norms = find_norms(graph, rms=True)
    if not norms:
        return "no LayerNorm or RMSNorm found"
    if len({n.rms for n in norms}) != 1:
        return "the model mixes LayerNorms and RMSNorms"
    norm_outputs = {id(n.output) for n in norms}
    values: dict[int, ir.Value] = {}
    writers: dict[int, Writer] = {}
    origins: dict[int, ir.Value] = {}
    for norm in norms:
        value = norm.input
        while id(value) not in values:
            values[id(value)] = value
            found = _residual_add(value)
            if found is None:
                origins[id(value)] = value
                break
            value, writer = found
            writers[id(writer.matmul)] = writer
    if any(i in norm_outputs for i in values):
        return "post-LN: a normalization output is part of the residual stream"
    if len(origins) != 1:
        return f"the residual stream has {len(origins)} origins, expected one embedding output"
    allowed = {id(node) for norm in norms for node in norm.input_uses()}
    allowed |= {id(v.producer()) for v in values.values() if v.producer() is not None}
    for value in values.values():
        for use in value.uses():
            if id(use.node) not in allowed:
                return f"stream value '{value.name}' is also read by '{use.node.name}' ({use.node.op_type})"
    widths = {w.weight.const_value.shape[1] for w in writers.values()}
    widths |= {n.gamma.const_value.shape[0] for n in norms if n.gamma is not None}
    if len(widths) != 1:
        return f"inconsistent residual widths {sorted(widths)}"
    origin = next(iter(origins.values()))
    outputs = {id(v) for v in graph.outputs}
    if any(id(v) in outputs for v in values.values()):
        return "a residual stream value is a graph output"
    return Stream(origin, list(values.values()), list(writers.values()), norms, widths.pop(), norms[0].rms)


def as_float64(value: ir.Value) -> np.ndarray:
    return value.const_value.numpy().astype(np.float64)
