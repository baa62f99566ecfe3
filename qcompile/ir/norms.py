"""Layer norms as exporters write them, found by structure in an onnx_ir graph: the shared recognition that
passes (rotate, smoothing, integer lowering) and backends (the TVM decoder reader) build on.

* A fused `LayerNormalization` over the last axis, or the decomposed form
  `Add(Mul(Div(Sub(x, ReduceMean x), Sqrt(Add(ReduceMean(Pow(Sub, 2)), eps))), γ), β)`;
* with `rms=True` (Llama-family decoders) an RMSNorm as exporters decompose it:
  `Mul(γ, n)` with `n = Mul(x, Reciprocal(Sqrt(Add(ReduceMean(Pow(x, 2)), eps))))` or `Div(x, Sqrt(…))`
  (`Mul(x, x)` for the square; either operand order), y = x / √(mean(x²) + ε) ⊙ γ with no mean and no β;
  also without γ (`gamma` None: the norms `rotate` leaves after folding γ into the next linears).
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

__all__ = ["Norm", "find_norms", "rms_norm_at", "const_vector", "producer", "other_input"]


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


def const_vector(value: ir.Value | None) -> bool:
    """A constant of rank 1 (γ, β, a bias)."""
    return value is not None and value.const_value is not None and len(value.const_value.shape) == 1


def producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    """The node producing `value` if it is an `op_type`."""
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op_type else None


def other_input(node: ir.Node, value: ir.Value) -> ir.Value:
    """The input of a binary node that is not `value`."""
    return node.inputs[1] if node.inputs[0] is value else node.inputs[0]


def _decomposed(add: ir.Node) -> Norm | None:
    for mul_value in add.inputs:
        mul = producer(mul_value, "Mul")
        beta = other_input(add, mul_value) if mul is not None else None
        if mul is None or not const_vector(beta) or len(mul_value.uses()) != 1:
            continue
        for div_value in mul.inputs:
            div = producer(div_value, "Div")
            gamma = other_input(mul, div_value) if div is not None else None
            if div is None or not const_vector(gamma):
                continue
            sub = producer(div.inputs[0], "Sub")
            mean = producer(sub.inputs[1], "ReduceMean") if sub is not None else None
            if mean is not None and mean.inputs[0] is sub.inputs[0] and producer(div.inputs[1], "Sqrt") is not None:
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
    sqrt = producer(value, "Sqrt")
    add = producer(sqrt.inputs[0], "Add") if sqrt is not None else None
    if add is None:
        return None
    for mean_value in add.inputs:
        mean = producer(mean_value, "ReduceMean")
        if mean is not None and _scalar_const(other_input(add, mean_value)):
            return mean
    return None


def _centered(x: ir.Value) -> bool:
    """x = Sub(a, ReduceMean(a)): the input is a LayerNorm's centred value, not an RMSNorm's."""
    sub = producer(x, "Sub")
    mean = producer(sub.inputs[1], "ReduceMean") if sub is not None else None
    return mean is not None and mean.inputs[0] is sub.inputs[0]


def _rms_core(node: ir.Node) -> tuple[ir.Value, ir.Node] | None:
    """(x, the square node) when `node` is x / √(mean(x²) + ε): `Mul(x, Reciprocal(Sqrt(…)))` or `Div(x, Sqrt(…))`."""
    if node.op_type == "Div":
        x, mean = node.inputs[0], _rms_denominator(node.inputs[1])
    elif node.op_type == "Mul":
        x, mean = None, None
        for r_value in node.inputs:
            reciprocal = producer(r_value, "Reciprocal")
            if reciprocal is not None:
                x, mean = other_input(node, r_value), _rms_denominator(reciprocal.inputs[0])
                break
    else:
        return None
    square = _rms_square(mean, x) if mean is not None and x is not None else None
    return (x, square) if square is not None and not _centered(x) else None


def rms_norm_at(mul: ir.Node) -> Norm | None:
    """`mul` = Mul(γ, n) of a decomposed RMSNorm (see the module docstring), as a Norm."""
    for n_value in mul.inputs:
        gamma = other_input(mul, n_value)
        inner = n_value.producer() if n_value is not None else None
        if inner is None or not const_vector(gamma) or len(n_value.uses()) != 1:
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
            if (axis == -1 or (rank is not None and axis == rank - 1)) and const_vector(node.inputs[1]):
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
