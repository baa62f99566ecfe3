"""The residual stream of a transformer as exporters write it: norms, residual adds, writers, origin.

* A **norm** is a fused `LayerNormalization` over the last axis, or the decomposed form
  `Add(Mul(Div(Sub(x, ReduceMean x), Sqrt(Add(ReduceMean(Pow(Sub, 2)), eps))), γ), β)`; or (with
  `rms=True`, Llama-family decoders) an RMSNorm as exporters decompose it:
  `Mul(γ, n)` with `n = Mul(x, Reciprocal(Sqrt(Add(ReduceMean(Pow(x, 2)), eps))))` or `Div(x, Sqrt(…))`
  (`Mul(x, x)` for the square; either operand order), y = x / √(mean(x²) + ε) ⊙ γ with no mean and no β;
  also without γ (`gamma` None: the norms `rotate` leaves after folding γ into the next linears).
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

__all__ = ["Norm", "Writer", "Stream", "find_norms", "find_writers", "find_stream", "rms_norm_at"]


@dataclasses.dataclass
class Norm:
    """A LayerNorm: input x, output y = n ⊙ γ + β. Decomposed parts are kept to rewrite it in place."""

    name: str
    input: ir.Value
    output: ir.Value
    gamma: ir.Value | None  # None: a weightless RMSNorm (γ folded away, e.g. by `rotate`)
    beta: ir.Value | None
    fused: ir.Node | None = None
    sub: ir.Node | None = None  # decomposed: Sub(x, ReduceMean x)
    div: ir.Node | None = None  # decomposed: n = Div(Sub, Sqrt(...))
    mul: ir.Node | None = None  # decomposed: n ⊙ γ
    rms: bool = False  # RMSNorm: n = div(x, …) is computed from x directly, no mean, no β
    square: ir.Node | None = None  # RMSNorm: Pow(x, 2) or Mul(x, x)

    def input_uses(self) -> list[ir.Node]:
        """The nodes of this norm that read its input."""
        if self.fused is not None:
            return [self.fused]
        if self.rms:
            return [self.square, self.div]
        return [self.sub, self.sub.inputs[1].producer()]

    @property
    def normalized(self) -> ir.Value:
        """n, the normalized value before γ (decomposed forms)."""
        return self.div.outputs[0]


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


def _const_vector(value: ir.Value | None) -> bool:
    return value is not None and value.const_value is not None and len(value.const_value.shape) == 1


def _producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op_type else None


def _other(node: ir.Node, value: ir.Value) -> ir.Value:
    return node.inputs[1] if node.inputs[0] is value else node.inputs[0]


def _decomposed(add: ir.Node) -> Norm | None:
    for mul_value in add.inputs:
        mul = _producer(mul_value, "Mul")
        beta = _other(add, mul_value) if mul is not None else None
        if mul is None or not _const_vector(beta) or len(mul_value.uses()) != 1:
            continue
        for div_value in mul.inputs:
            div = _producer(div_value, "Div")
            gamma = _other(mul, div_value) if div is not None else None
            if div is None or not _const_vector(gamma):
                continue
            sub = _producer(div.inputs[0], "Sub")
            mean = _producer(sub.inputs[1], "ReduceMean") if sub is not None else None
            if mean is not None and mean.inputs[0] is sub.inputs[0] and _producer(div.inputs[1], "Sqrt") is not None:
                return Norm(add.name, sub.inputs[0], add.outputs[0], gamma, beta, sub=sub, div=div, mul=mul)
    return None


def _scalar_const(value: ir.Value | None, expected: float | None = None) -> bool:
    if value is None or value.const_value is None or value.const_value.size != 1:
        return False
    return expected is None or float(value.const_value.numpy().reshape(())) == expected


def _rms_square(mean: ir.Node, x: ir.Value) -> ir.Node | None:
    """The Pow(x, 2) or Mul(x, x) that `mean` (a ReduceMean) reads, if it squares x."""
    square = mean.inputs[0].producer() if mean.inputs[0] is not None else None
    if square is None:
        return None
    if square.op_type == "Pow" and square.inputs[0] is x and _scalar_const(square.inputs[1], 2.0):
        return square
    if square.op_type == "Mul" and square.inputs[0] is x and square.inputs[1] is x:
        return square
    return None


def _rms_denominator(value: ir.Value | None) -> ir.Node | None:
    """The ReduceMean under `Sqrt(Add(ReduceMean(·), ε))` producing `value`, else None."""
    sqrt = _producer(value, "Sqrt")
    add = _producer(sqrt.inputs[0], "Add") if sqrt is not None else None
    if add is None:
        return None
    for mean_value in add.inputs:
        mean = _producer(mean_value, "ReduceMean")
        if mean is not None and _scalar_const(_other(add, mean_value)):
            return mean
    return None


def _centered(x: ir.Value) -> bool:
    """x = Sub(a, ReduceMean(a)): the input is a LayerNorm's centred value, not an RMSNorm's."""
    sub = _producer(x, "Sub")
    mean = _producer(sub.inputs[1], "ReduceMean") if sub is not None else None
    return mean is not None and mean.inputs[0] is sub.inputs[0]


def _rms_core(node: ir.Node) -> tuple[ir.Value, ir.Node] | None:
    """(x, the square node) when `node` is x / √(mean(x²) + ε): `Mul(x, Reciprocal(Sqrt(…)))` or `Div(x, Sqrt(…))`."""
    if node.op_type == "Div":
        x, mean = node.inputs[0], _rms_denominator(node.inputs[1])
    elif node.op_type == "Mul":
        x, mean = None, None
        for r_value in node.inputs:
            reciprocal = _producer(r_value, "Reciprocal")
            if reciprocal is not None:
                x, mean = _other(node, r_value), _rms_denominator(reciprocal.inputs[0])
                break
    else:
        return None
    square = _rms_square(mean, x) if mean is not None and x is not None else None
    return (x, square) if square is not None and not _centered(x) else None


def rms_norm_at(mul: ir.Node) -> Norm | None:
    """`mul` = Mul(γ, n) of a decomposed RMSNorm (see the module docstring), as a Norm."""
    for n_value in mul.inputs:
        gamma = _other(mul, n_value)
        inner = n_value.producer() if n_value is not None else None
        if inner is None or not _const_vector(gamma) or len(n_value.uses()) != 1:
            continue
        core = _rms_core(inner)
        if core is not None:
            return Norm(mul.name, core[0], mul.outputs[0], gamma, None, div=inner, mul=mul, rms=True, square=core[1])
    return None


def _weightless_rms_norm(node: ir.Node) -> Norm | None:
    """`node` = x / √(mean(x²) + ε) whose output is not scaled by a γ (as `rotate` leaves RMSNorms), as a Norm."""
    core = _rms_core(node)
    if core is None:
        return None
    uses = list(node.outputs[0].uses())
    if len(uses) == 1 and uses[0].node.op_type == "Mul" and rms_norm_at(uses[0].node) is not None:
        return None  # the γ Mul after it is the norm
    return Norm(node.name, core[0], node.outputs[0], None, None, div=node, rms=True, square=core[1])


def find_norms(graph: ir.Graph, rms: bool = False) -> list[Norm]:
    """Every LayerNorm (fused over the last axis, or decomposed) of `graph`, in graph order; with `rms`,
    the decomposed RMSNorms too."""
    norms = []
    for node in graph:
        if node.op_type == "LayerNormalization" and node.domain in ("", "ai.onnx"):
            rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
            axis = node.attributes.get_int("axis", -1)
            if (axis == -1 or (rank is not None and axis == rank - 1)) and _const_vector(node.inputs[1]):
                beta = node.inputs[2] if len(node.inputs) > 2 else None
                norms.append(Norm(node.name, node.inputs[0], node.outputs[0], node.inputs[1], beta, fused=node))
        elif node.op_type == "Add":
            norm = _decomposed(node)
            if norm is not None:
                norms.append(norm)
        elif rms and node.op_type in ("Mul", "Div"):
            norm = (rms_norm_at(node) if node.op_type == "Mul" else None) or _weightless_rms_norm(node)
            if norm is not None:
                norms.append(norm)
    return norms


def _writer(value: ir.Value) -> Writer | None:
    """The linear branch producing `value`, if it is one."""
    if value is None or len(value.uses()) != 1:
        return None
    scale_mul, scale = None, None
    node = value.producer()
    if node is not None and node.op_type == "Mul":
        for inner in node.inputs:
            if inner is not None and inner.const_value is None and _const_vector(_other(node, inner)):
                scale_mul, scale, value = node, _other(node, inner), inner
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
        matmul = _producer(mm_value, "MatMul")
        bias = _other(node, mm_value) if matmul is not None else None
        if matmul is None or not _const_vector(bias) or len(mm_value.uses()) != 1 or len(bias.uses()) != 1:
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
    writers = [(_other(node, v), _writer(v)) for v in node.inputs]
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
