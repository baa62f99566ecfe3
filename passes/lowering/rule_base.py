"""The shape of an integer-lowering rule, and the dispatch over an ordered table of them.

A rule lowers one float node (with the nodes it absorbs) to integer nodes, in three steps, as the
onnxscript rewriter shapes its rules:

* `match(ctx, node)`: the structure only (op type, constant operands, the nodes of a chain such as the
  Erf form of GELU); returns a `MatchResult` whose `bindings` hold what was found, or a failed one with
  the reason;
* `check(ctx, node, **bindings)`: the conditions that make the rewrite exact and well defined on this site
  (a per-tensor quantizer on the input, a softmax over the last axis, an additive mask with a keep code);
  a failed `MatchResult` says why;
* `rewrite(ctx, node, **bindings)`: emits the integer nodes (`ctx.emit`), records the output's integer
  form (`ctx.ints`, an `IntValue`) and the nodes it absorbed (`ctx.consumed`). It does not fail.

`lower_with(rules, ctx, node)` tries the rules in table order; the first whose match and check succeed
rewrites the node. A rule looks at a node when the node's op type is one of its `op_types`; a rule with
no `op_types` looks at every op, and reports a reason only when its match succeeded and its check
failed. When none applies the pass stops with a `LoweringError` naming the node, its op and, for every
rule that looked at it, why that rule did not apply: no float computation is left behind silently. An
`InputError` raised while matching or checking (an input with no integer form) is that rule's reason.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol

import onnx_ir as ir

from qcompile.errors import InputError

__all__ = [
    "STANDARD_DOMAINS",
    "LoweringContext",
    "LoweringError",
    "LoweringRule",
    "MatchResult",
    "failed",
    "lower_with",
    "matched",
]

STANDARD_DOMAINS = ("", "ai.onnx")


@dataclasses.dataclass
class MatchResult:
    """Success (with `bindings` for check and rewrite), or failure with a `reason`."""

    reason: str = ""
    bindings: dict[str, Any] = dataclasses.field(default_factory=dict)

    def fail(self, reason: str) -> MatchResult:
        self.reason = reason
        return self

    def __bool__(self) -> bool:
        return not self.reason


def matched(**bindings: Any) -> MatchResult:
    """A successful match binding `bindings`."""
    return MatchResult(bindings=bindings)


def failed(reason: str) -> MatchResult:
    """A failed match or check."""
    return MatchResult(reason=reason)


def output_on_calibrated_grid(ctx: LoweringContext, node: ir.Node) -> MatchResult:
    """The check of rules whose integer result lives on the output's calibrated grid."""
    if node.outputs[0].name not in ctx.scales:
        return failed(f"no calibrated grid for '{node.outputs[0].name}'")
    return matched()


class LoweringContext(Protocol):
    """What rules read and write (implemented by the `intonly` pass's lowering state)."""

    emit: Any  # Emitter
    ints: dict[int, Any]  # id(float value) → IntValue
    consumed: set[int]  # ids of float nodes absorbed by an earlier rule
    scales: Any  # Ranges: calibrated grids by value name

    def integer(self, value: ir.Value) -> Any: ...


class LoweringRule:
    """Base class of the rules of the lowering table (`rule_table.RULES`)."""

    op_types: ClassVar[tuple[str, ...]] = ()  # root op types this rule looks at; () means every op

    @property
    def name(self) -> str:
        return type(self).__name__

    def looks_at(self, node: ir.Node) -> bool:
        return not self.op_types or (node.op_type in self.op_types and node.domain in STANDARD_DOMAINS)

    def match(self, ctx: LoweringContext, node: ir.Node) -> MatchResult:
        raise NotImplementedError

    def check(self, ctx: LoweringContext, node: ir.Node, **bindings: Any) -> MatchResult:
        return MatchResult()

    def rewrite(self, ctx: LoweringContext, node: ir.Node, **bindings: Any) -> None:
        raise NotImplementedError


class LoweringError(InputError):
    """No rule of the table lowers `node`; `reasons` maps each rule that looked at it to why not."""

    def __init__(self, node: ir.Node, reasons: dict[str, str]) -> None:
        self.node, self.reasons = node, reasons
        name = node.name or (node.outputs[0].name if node.outputs else "")
        if reasons:
            why = "; ".join(f"{rule}: {reason}" for rule, reason in reasons.items())
            message = f"pass 'intonly' cannot lower node '{name}' ({node.op_type}): no integer rule applies ({why})"
        else:
            message = f"pass 'intonly' cannot lower node '{name}' ({node.op_type}): no integer rule for this op"
        super().__init__(message)


def _attempt(rule: LoweringRule, ctx: LoweringContext, node: ir.Node) -> tuple[MatchResult, bool]:
    """(result, whether the structure matched)."""
    try:
        found = rule.match(ctx, node)
        if not found:
            return found, False
        checked = rule.check(ctx, node, **found.bindings)
    except InputError as error:
        return failed(str(error)), True
    if not checked:
        return checked, True
    return matched(**{**found.bindings, **checked.bindings}), True


def lower_with(rules: list[LoweringRule], ctx: LoweringContext, node: ir.Node) -> str:
    """Rewrite `node` with the first rule of `rules` that matches and checks; returns its name."""
    reasons: dict[str, str] = {}
    for rule in rules:
        if not rule.looks_at(node):
            continue
        result, structure = _attempt(rule, ctx, node)
        if result:
            rule.rewrite(ctx, node, **result.bindings)
            return rule.name
        if rule.op_types or structure:
            reasons[rule.name] = result.reason
    raise LoweringError(node, reasons)
