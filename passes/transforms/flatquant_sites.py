"""Where FlatQuant puts its transforms: the activations that feed only linears, and where diag(c) folds.

A **site** is an activation x (not a constant) whose every consumer is a linear with its own constant
weight (`norm_sites.linear_reading`), none of them the model's head (a linear whose output is a graph
output stays float in the LLM recipes). On a Llama block the sites are the input norm's output (q/k/v),
the attention output (o_proj), the post-attention norm's output (gate/up) and the SwiGLU product
(down_proj): the four transform groups of FlatQuant.

The per-channel scaling x ↦ x·diag(c) is folded backwards where the producer allows it exactly:
* `gamma`: x = Mul(n, γ) with γ a constant vector used once (an RMSNorm/LayerNorm affine): γ ← γ ⊙ c;
* `linear`: x = Mul(a, u) with u = MatMul(·, W_u) whose output and weight are used once (SwiGLU's up
  projection): W_u[:, j] ← W_u[:, j] · c_j;
otherwise (`online`) a Mul by c runs in the graph before the transform.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from qcompile.passes.transforms.norm_sites import Linear, linear_reading

__all__ = ["FlatSite", "find_flat_sites", "kronecker_split"]


def kronecker_split(n: int) -> tuple[int, int]:
    """n = n1·n2 with n1 the largest divisor of n not above √n (FlatQuant's sizes: 576 → 24·24,
    1536 → 32·48, 4096 → 64·64, 11008 → 86·128, 14336 → 112·128, 28672 → 128·224)."""
    if n < 1:
        raise ValueError(f"kronecker_split needs n >= 1, got {n}")
    n1 = max(d for d in range(1, int(n**0.5) + 1) if n % d == 0)
    return n1, n // n1


@dataclasses.dataclass
class FlatSite:
    """One transform: the activation `x` read by `linears`; `fold` says where diag(c) goes (module docstring)."""

    x: ir.Value
    linears: list[Linear]
    channels: int
    fold: str  # "gamma", "linear" or "online"
    fold_value: ir.Value | None  # γ, or the up projection's weight

    @property
    def name(self) -> str:
        return self.x.name


def _const_vector(value: ir.Value | None, channels: int) -> bool:
    return (
        value is not None
        and value.const_value is not None
        and tuple(value.const_value.shape) == (channels,)
        and len(value.uses()) == 1
    )


def _fold_target(x: ir.Value, channels: int) -> tuple[str, ir.Value | None]:
    node = x.producer()
    if node is None or node.op_type != "Mul" or len(x.uses()) == 0:
        return "online", None
    for operand in node.inputs:
        if _const_vector(operand, channels):
            return "gamma", operand
    for operand in node.inputs:
        up = operand.producer() if operand is not None else None
        if up is None or up.op_type != "MatMul" or len(operand.uses()) != 1:
            continue
        weight = up.inputs[1]
        if (
            weight is not None
            and weight.const_value is not None
            and len(weight.const_value.shape) == 2
            and weight.const_value.shape[1] == channels
            and len(weight.uses()) == 1
        ):
            return "linear", weight
    return "online", None


def find_flat_sites(graph: ir.Graph) -> tuple[list[FlatSite], dict[str, str]]:
    """Every site of `graph` in graph order, and {value name: reason} for linear inputs that are not sites."""
    outputs = {id(v) for v in graph.outputs}
    sites: list[FlatSite] = []
    skipped: dict[str, str] = {}
    seen: set[int] = set()
    for node in graph:
        if node.op_type not in ("MatMul", "Gemm") or node.domain not in ("", "ai.onnx"):
            continue
        x, weight = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
        if x is None or x.const_value is not None or weight is None or weight.const_value is None:
            continue
        if id(x) in seen:
            continue
        seen.add(id(x))
        if any(id(o) in outputs for use in x.uses() for o in use.node.outputs):
            skipped[x.name] = "a linear reading it is the model's head (its output is a graph output)"
            continue
        shape = weight.const_value.shape
        in_axis = 1 if node.op_type == "Gemm" and node.attributes.get_int("transB", 0) else 0
        channels = shape[in_axis] if len(shape) == 2 else -1
        linears = [linear_reading(use, channels) for use in x.uses()]
        reasons = [r for r in linears if isinstance(r, str)]
        if reasons:
            skipped[x.name] = reasons[0]
            continue
        fold, fold_value = _fold_target(x, channels)
        sites.append(FlatSite(x, linears, channels, fold, fold_value))
    return sites, skipped
