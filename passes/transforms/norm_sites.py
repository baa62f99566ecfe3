"""Find normalization → linear sites as exporters really write them.

A site is a normalization output y = n ⊙ γ + β (per channel of the last axis) whose every consumer is a
linear layer with its own constant weight:

* the normalization is a fused `LayerNormalization` (γ, β its inputs 1 and 2, normalized over the last
  axis), or a decomposed one: `Add(Mul(Div(Sub(x, ReduceMean x), Sqrt(…)), γ), β)` (either operand order);
  with `rms=True` also a decomposed RMSNorm `Mul(γ, x / √(mean(x²) + ε))` (no β);
* a linear is `MatMul(y, W[K, N])` (input channel = row of W) or `Gemm(y, W)` (row of W, or its column
  when transB=1).

Each candidate that fails a condition is reported with the reason instead (shared or non-constant γ/β or
weight, a consumer that is not a linear, a weight used elsewhere), so folding passes can say why they
skipped it. Uses explicit use-def walks: the fan-out (one norm → Q, K, V) is what patterns cannot express.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from qcompile.passes.transforms.residual_stream import rms_norm_at

__all__ = ["Linear", "NormSite", "find_norm_sites", "linear_reading", "norm_linears"]


@dataclasses.dataclass
class Linear:
    """A consumer of the norm output: `node` and its weight; `in_axis` is the weight's input-channel axis."""

    node: ir.Node
    weight: ir.Value
    in_axis: int

    def array(self) -> np.ndarray:
        return self.weight.const_value.numpy()

    def rows_absmax(self) -> np.ndarray:
        """max |W| per input channel, float64."""
        array = np.abs(self.array().astype(np.float64))
        return array.max(axis=1 - self.in_axis)

    def scale_input_channels(self, factor: np.ndarray) -> None:
        """W[c, :] *= factor[c] (along `in_axis`), computed in float64, stored in W's dtype."""
        array = self.array()
        shape = [1, 1]
        shape[self.in_axis] = -1
        scaled = array.astype(np.float64) * factor.reshape(shape)
        self.weight.const_value = ir.tensor(scaled.astype(array.dtype), name=self.weight.name)


@dataclasses.dataclass
class NormSite:
    """A normalization whose affine (γ, β) feeds only linears."""

    name: str
    output: ir.Value
    gamma: ir.Value
    beta: ir.Value | None
    linears: list[Linear]

    def scale_affine(self, factor: np.ndarray) -> None:
        """γ *= factor, β *= factor (float64 math)."""
        for value in (self.gamma, self.beta):
            if value is None:
                continue
            array = value.const_value.numpy()
            value.const_value = ir.tensor((array.astype(np.float64) * factor).astype(array.dtype), name=value.name)


def _const_vector(value: ir.Value | None) -> bool:
    return value is not None and value.const_value is not None and len(value.const_value.shape) == 1


def _decomposed_affine(node: ir.Node) -> tuple[ir.Value, ir.Value] | None:
    """(γ, β) if `node` is the Add of a decomposed LayerNorm's affine, else None."""
    if node.op_type != "Add":
        return None
    for mul_index in (0, 1):
        mul_value, beta = node.inputs[mul_index], node.inputs[1 - mul_index]
        mul = mul_value.producer() if mul_value is not None else None
        if mul is None or mul.op_type != "Mul" or not _const_vector(beta):
            continue
        for div_index in (0, 1):
            div_value, gamma = mul.inputs[div_index], mul.inputs[1 - div_index]
            div = div_value.producer() if div_value is not None else None
            if div is None or div.op_type != "Div" or not _const_vector(gamma):
                continue
            sub = div.inputs[0].producer() if div.inputs[0] is not None else None
            sqrt = div.inputs[1].producer() if div.inputs[1] is not None else None
            if sub is not None and sub.op_type == "Sub" and sqrt is not None and sqrt.op_type == "Sqrt":
                mean = sub.inputs[1].producer() if sub.inputs[1] is not None else None
                if mean is not None and mean.op_type == "ReduceMean" and len(mul_value.uses()) == 1:
                    return gamma, beta
    return None


def _affine(node: ir.Node, rms: bool) -> tuple[ir.Value, ir.Value | None] | None:
    if rms and node.op_type == "Mul":
        norm = rms_norm_at(node)
        return (norm.gamma, None) if norm is not None else None
    if node.op_type == "LayerNormalization" and node.domain in ("", "ai.onnx"):
        axis = node.attributes.get_int("axis", -1)
        rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
        if axis == -1 or (rank is not None and axis == rank - 1):
            beta = node.inputs[2] if len(node.inputs) > 2 else None
            return node.inputs[1], beta
        return None
    return _decomposed_affine(node)


def linear_reading(use: ir.Usage, channels: int) -> Linear | str:
    """The linear that `use` is (its input 0, a constant 2-D weight used once), or why it is not one."""
    node, index = use.node, use.idx
    if node.op_type not in ("MatMul", "Gemm") or index != 0:
        return f"consumer '{node.name}' ({node.op_type}) is not a linear reading the norm as its first input"
    weight = node.inputs[1]
    if weight is None or weight.const_value is None:
        return f"weight of '{node.name}' is not a constant"
    if len(weight.const_value.shape) != 2:
        return f"weight of '{node.name}' is not 2-D"
    if len(weight.uses()) != 1:
        return f"weight '{weight.name}' of '{node.name}' is shared; folding would change its other consumers"
    in_axis = 1 if node.op_type == "Gemm" and node.attributes.get_int("transB", 0) else 0
    if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
        return f"'{node.name}' transposes its input (transA=1)"
    if weight.const_value.shape[in_axis] != channels:
        return f"weight of '{node.name}' has {weight.const_value.shape[in_axis]} input channels, the norm {channels}"
    return Linear(node, weight, in_axis)


def find_norm_sites(graph: ir.Graph, rms: bool = False) -> tuple[list[NormSite], dict[str, str]]:
    """All foldable norm → linear sites of `graph`, and {norm name: reason} for the ones that are not;
    with `rms`, RMSNorm sites (γ only, `residual_stream.rms_norm_at`) too."""
    sites: list[NormSite] = []
    skipped: dict[str, str] = {}
    for node in graph:
        affine = _affine(node, rms)
        if affine is None:
            continue
        gamma, beta = affine
        name = node.name or node.outputs[0].name
        if not _const_vector(gamma) or (beta is not None and not _const_vector(beta)):
            skipped[name] = "γ or β is not a constant vector"
            continue
        if len(gamma.uses()) != 1 or (beta is not None and len(beta.uses()) != 1):
            skipped[name] = "γ or β is shared with another node"
            continue
        output = node.outputs[0]
        uses = list(output.uses())
        if not uses or any(output is v for v in graph.outputs):
            skipped[name] = "the norm output is a graph output or unused"
            continue
        channels = gamma.const_value.shape[0]
        linears = [linear_reading(use, channels) for use in uses]
        reasons = [r for r in linears if isinstance(r, str)]
        if reasons:
            skipped[name] = reasons[0]
            continue
        sites.append(NormSite(name, output, gamma, beta, linears))
    return sites, skipped


def norm_linears(output: ir.Value, channels: int) -> list[Linear] | str:
    """The linears among the consumers of `output` (others, e.g. a residual Add, are ignored), or why none
    can be rewritten: no linear reads it, or one of them has a shared/non-constant/mis-shaped weight."""
    linears = [linear_reading(use, channels) for use in output.uses() if use.node.op_type in ("MatMul", "Gemm")]
    reasons = [r for r in linears if isinstance(r, str)]
    if reasons:
        return reasons[0]
    return linears or "no linear reads the norm output"
