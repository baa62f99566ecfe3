"""Canonicalize equivalent float forms before the lowering's rule table sees them.

Exporters and graph optimizers fold constants into neighbouring ops in ways that change no number but
hide a pattern the rule table recognizes. Each canonicalization rule rewrites one such form back into the
form the rules match, exactly in real arithmetic (and in float32: only multiplications by powers of two
are added), keeping the quantizers the quantize pass placed:

* `UnhalvedGeluIntoGelu`: GELU with its ×0.5 moved into the next weight (W' = W/2),
  x·(1 + erf(x/√2)) = 2·GELU(x), becomes (x·(1 + erf(x/√2)))·0.5 followed by ×2. The ×0.5 product is
  the GELU `gelu_rule` matches; the ×2 is scale bookkeeping (`affine_rule`). The activation QuantSpec on
  the product (the next linear's input quantizer, scale s) moves to the ×2 output, and the GELU output
  gets the same codes at scale s/2, so the GELU table still writes the next linear's codes directly.

Rules have the lowering rules' shape (`rule_base`): `match` (structure), `check` (with a reason),
`rewrite` (here on the float graph). `canonicalize` applies each rule at every node once, in graph order,
and returns how many sites each rule rewrote.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir

from qcompile.ir import quant_meta
from qcompile.passes.lowering.gelu_rule import match_gelu
from qcompile.passes.lowering.graph_match import only_use, other_input, scalar_constant
from qcompile.passes.lowering.rule_base import STANDARD_DOMAINS, MatchResult, failed, matched

__all__ = ["CanonicalRule", "UnhalvedGeluIntoGelu", "CANONICAL_RULES", "canonicalize"]


class CanonicalRule:
    """A float-graph rewrite applied before lowering."""

    op_types: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return type(self).__name__

    def match(self, node: ir.Node) -> MatchResult:
        raise NotImplementedError

    def check(self, node: ir.Node, **bindings) -> MatchResult:
        return MatchResult()

    def rewrite(self, graph: ir.Graph, node: ir.Node, **bindings) -> None:
        raise NotImplementedError


def _constant(graph: ir.Graph, name: str, number: float) -> ir.Value:
    taken = set(graph.initializers)
    unique, index = name, 0
    while unique in taken:
        index += 1
        unique = f"{name}_{index}"
    value = ir.Value(name=unique, const_value=ir.tensor(np.float32(number), name=unique))
    value.dtype, value.shape = ir.DataType.FLOAT, ir.Shape([])
    graph.register_initializer(value)
    return value


class UnhalvedGeluIntoGelu(CanonicalRule):
    """x·(1 + erf(x/√2)) (no ×0.5) → (x·(1 + erf(x/√2)))·0.5·2."""

    op_types = ("Erf",)

    def match(self, node: ir.Node) -> MatchResult:
        scaled = node.inputs[0].producer()
        if scaled is None or scaled.op_type not in ("Mul", "Div") or len(scaled.inputs) != 2:
            return failed("Erf input is not x·(1/√2) or x/√2")
        x, factor = scaled.inputs[0], scalar_constant(scaled.inputs[1])
        if scaled.op_type == "Mul" and factor is None:
            x, factor = scaled.inputs[1], scalar_constant(scaled.inputs[0])
        if factor is None or factor == 0.0:
            return failed("Erf input is not x scaled by a constant")
        if not math.isclose(factor if scaled.op_type == "Mul" else 1.0 / factor, 0.5**0.5, rel_tol=1e-4):
            return failed(f"Erf input scale {factor} is not 1/√2")
        add = only_use(node.outputs[0], "Add")
        if add is None or scalar_constant(other_input(add, node.outputs[0])) != 1.0:
            return failed("erf is not followed by + 1 alone")
        product = only_use(add.outputs[0], "Mul")
        if product is None or other_input(product, add.outputs[0]) is not x:
            return failed("1 + erf is not multiplied by x")
        return matched(product=product)

    def check(self, node: ir.Node, product: ir.Node) -> MatchResult:
        if match_gelu(node) is not None:
            return failed("already a GELU")
        output = product.outputs[0]
        if output.dtype not in (None, ir.DataType.FLOAT):
            return failed("not a float32 product")
        spec = quant_meta.get_quant(output)
        if spec is not None and (spec.kind != "uniform" or spec.axis is not None):
            return failed(f"the product's quantizer is {spec.kind} per axis {spec.axis}, not per-tensor uniform")
        return matched()

    def rewrite(self, graph: ir.Graph, node: ir.Node, product: ir.Node) -> None:
        doubled = product.outputs[0]  # 2·GELU(x), read by the next linear
        readers = list(doubled.uses())
        half = ir.node("Mul", [doubled, _constant(graph, f"{doubled.name}_half", 0.5)], name=f"{product.name}_half")
        gelu = half.outputs[0]
        gelu.name, gelu.dtype, gelu.shape = f"{doubled.name}_gelu", doubled.dtype, doubled.shape
        twice = ir.node("Mul", [gelu, _constant(graph, f"{doubled.name}_two", 2.0)], name=f"{product.name}_twice")
        out = twice.outputs[0]
        out.name, out.dtype, out.shape = f"{doubled.name}_canonical", doubled.dtype, doubled.shape
        graph.insert_after(product, [half, twice])
        for use in readers:
            use.node.replace_input_with(use.idx, out)
        for index, output in enumerate(graph.outputs):
            if output is doubled:  # the graph output keeps its name
                graph.outputs[index] = out
                name = doubled.name
                doubled.name, out.name = f"{name}_doubled", name
        spec = quant_meta.get_quant(doubled)
        if spec is not None:
            quant_meta.clear_quant(doubled)
            quant_meta.set_quant(out, spec)
            quant_meta.set_quant(gelu, dataclasses.replace(spec, scale=np.asarray(spec.scale) * 0.5))


CANONICAL_RULES: list[CanonicalRule] = [UnhalvedGeluIntoGelu()]


def canonicalize(model: ir.Model, rules: list[CanonicalRule] | None = None) -> dict[str, int]:
    """Apply `rules` (default `CANONICAL_RULES`) in place; {rule name: sites rewritten}."""
    counts: dict[str, int] = {}
    for rule in rules if rules is not None else CANONICAL_RULES:
        for node in list(model.graph):
            if rule.op_types and (node.op_type not in rule.op_types or node.domain not in STANDARD_DOMAINS):
                continue
            found = rule.match(node)
            if not found or not (checked := rule.check(node, **found.bindings)):
                continue
            rule.rewrite(model.graph, node, **{**found.bindings, **checked.bindings})
            counts[rule.name] = counts.get(rule.name, 0) + 1
    return counts
