"""NoisyQuant (Liu et al. 2023; METHODS.md §5): a fixed noisy bias before an activation quantizer.

For an activation x whose every consumer is a linear with a constant weight and bias,
y_i = x W_i + b_i, add a fixed per-channel noise vector N (shared by all tokens) and fold its effect
into each bias:

    x' = x + N,     b_i' = b_i − N W_i       ⇒   x' W_i + b_i' = x W_i + b_i     (EXACT_IN_REALS)

The quantizer that follows sees x' instead of x: rounding errors of x' decorrelate from x's heavy-tailed
distribution, which lowers the quantization error of the layer output. N_j ~ U(−Δ/2, Δ/2), Δ the b-bit
step of x's calibrated range, drawn once from the run's seed and frozen as an initializer. (The paper
samples uniform noise; the reference code uses `randn*2−1`; the paper's choice is taken, without the
code's per-layer search of the noise mean and range.) Bias math in float64.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.errors import InputError
from qcompile.ir import quant_meta
from qcompile.ir.properties import Property
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.pass_base import Numerics, Pass, PassResult
from qcompile.pipeline.registry import register_pass, register_recipe

__all__ = ["AddNoisyBiasPass", "linear_with_bias"]


def linear_with_bias(use) -> tuple[ir.Node, ir.Value, ir.Value] | str:
    """(MatMul, weight [K, N], bias [N]) for `MatMul(x, W) → Add(·, b)`, or the reason it is not one."""
    node = use.node
    if node.op_type != "MatMul" or use.idx != 0:
        return f"consumer '{node.name}' ({node.op_type}) is not a MatMul reading x first"
    weight = node.inputs[1]
    if weight is None or weight.const_value is None or len(weight.const_value.shape) != 2:
        return f"weight of '{node.name}' is not a 2-D constant"
    uses = list(node.outputs[0].uses())
    if len(uses) != 1 or uses[0].node.op_type != "Add":
        return f"'{node.name}' is not followed by a single bias Add"
    add = uses[0].node
    bias = add.inputs[1 - uses[0].idx]
    if bias is None or bias.const_value is None or bias.const_value.shape != (weight.const_value.shape[1],):
        return f"the Add after '{node.name}' has no constant bias of {weight.const_value.shape[1]} channels"
    if len(bias.uses()) != 1:
        return f"bias '{bias.name}' is shared"
    return node, weight, bias


@register_pass("noisy-bias")
class AddNoisyBiasPass(Pass):
    """NoisyQuant: add fixed uniform noise N before linears' inputs and fold −N·W into their biases."""

    requires = frozenset({Property.CALIBRATED})
    invalidates = frozenset({Property.CALIBRATED})  # the quantized inputs are now x + N
    numerics = Numerics.EXACT_IN_REALS
    target_bits_option = "bits"  # the noise spans one step of the following quantizer

    def __init__(self, bits: int = 8, context: PipelineContext | None = None) -> None:
        if not 2 <= int(bits) <= 8:
            raise ValueError(f"bits must be in 2..8, got {bits}")
        self.bits = int(bits)
        self.context = context or PipelineContext()

    def _sites(self, model: ir.Model):
        """(x, [(matmul, weight, bias)]) for activations feeding only biased linears; skipped reasons."""
        sites, skipped = [], {}
        seen: set[int] = set()
        for node in model.graph:
            if node.op_type != "MatMul":
                continue
            x = node.inputs[0]
            if x is None or id(x) in seen or x.const_value is not None or quant_meta.get_range(x) is None:
                continue
            seen.add(id(x))
            linears = [linear_with_bias(use) for use in x.uses()]
            reasons = [r for r in linears if isinstance(r, str)]
            if reasons:
                skipped[x.name] = reasons[0]
            else:
                sites.append((x, linears))
        return sites, skipped

    def call(self, model: ir.Model) -> PassResult:
        rng = np.random.default_rng(self.context.seed)
        sites, skipped = self._sites(model)
        for x, linears in sites:
            if any(quant_meta.get_quant(v) is not None for v in [x, *(w for _, w, _ in linears)]):
                raise InputError(f"pass 'noisy-bias' must run before quantization ('{x.name}' is quantized)")
            tensor_range = quant_meta.get_range(x)
            step = (max(tensor_range.hi, 0.0) - min(tensor_range.lo, 0.0)) / (2**self.bits - 1)
            channels = linears[0][1].const_value.shape[0]
            noise = rng.uniform(-step / 2, step / 2, size=channels)
            noise_value = ir.Value(
                name=f"{x.name}_noise", const_value=ir.tensor(noise.astype(np.float32), name=f"{x.name}_noise")
            )
            noise_value.dtype, noise_value.shape = ir.DataType.FLOAT, ir.Shape([channels])
            model.graph.register_initializer(noise_value)
            add = ir.node("Add", [x, noise_value], name=f"{x.name}_AddNoise")
            add.outputs[0].name = f"{x.name}_noisy"
            add.outputs[0].dtype = x.dtype or ir.DataType.FLOAT
            add.outputs[0].shape = x.shape
            for matmul, weight, bias in linears:
                folded = bias.const_value.numpy().astype(np.float64) - noise @ weight.const_value.numpy().astype(
                    np.float64
                )
                bias.const_value = ir.tensor(folded.astype(bias.const_value.numpy().dtype), name=bias.name)
                matmul.replace_input_with(0, add.outputs[0])
            producer = x.producer()
            if producer is not None:
                model.graph.insert_after(producer, add)
            else:
                model.graph.insert_before(model.graph.node(0), add)
            quant_meta.set_range(x, None)
        stats = {"noised": len(sites), "skipped": skipped, "bits": self.bits, "noise": "uniform(-step/2, step/2)"}
        return PassResult(model, modified=bool(sites), stats=stats)


register_recipe(
    "noisy",
    ["calibrate", "noisy-bias"],
    "calibrate, then add NoisyQuant's fixed uniform noise before biased linears (folded into the biases)",
)
