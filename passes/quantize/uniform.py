"""Uniform quantization: choose a `QuantSpec` for every input of the quantizable ops.

For each node of the chosen op types (default MatMul and Gemm) and each of its first two inputs:
* a constant weight gets a symmetric per-channel b_w-bit quantizer along its output-channel axis
  (MatMul B[..., K, N]: the last axis; Gemm B: axis 0 if transB else 1; a constant A: per tensor),
  its threshold max|W_c| or, with `weight_search=mse`, the per-channel MSE-best clipped one (params.py);
  with `weight_search=gptq` the MSE-clipped grid is kept and the weight is rounded onto it by GPTQ
  (gptq.py) using H = Σ xᵀx of the linear's input, streamed over the calibration data; the initializer
  then holds the rounded values Ŵ = codes·s exactly, so QDQ export recovers the same codes;
* an activation gets an asymmetric per-tensor b_a-bit quantizer from its calibrated `TensorRange`,
  unless its producer's op type is listed in `keep_float` (e.g. `Softmax`: attention probabilities over
  n tokens are mostly ≈1/n, below or near one step 1/(2^b − 1) of a uniform grid on [0, 1], so they
  stay float until a log2 quantizer handles them; see docs/methods/uniform.md).

Options for decoder LLMs (docs/methods/per-token.md):
* `weight_group=G` (0: per channel): weights get one quantizer per G consecutive input channels (the reduction
  axis K: MatMul B[..., K, N] axis −2, Gemm B axis 1 if transB else 0) per output channel; `weight_symmetric=false`
  makes them asymmetric (unsigned, a zero point per group). When G does not divide K the last group is shorter
  (576 = 4·128 + 64); a K smaller than G is an InputError naming the node. `mse` clips groups of either kind;
  `weight_search=gptq` on groups fits each group's grid during the GPTQ sweep, MSE-clipped (`group_clip=false`:
  min/max).
* GPTQ (`weight_search=gptq`, gptq_weights.py): `gptq_sequential` (default true) takes each layer's Hessians
  from the outputs of the already rounded layers where the model has a pre-norm residual stream;
  `gptq_act_order` (default true) sweeps inputs by decreasing Hessian diagonal (groups then fit up front).
* `keep_head_float`: the linears whose output is a graph output (an LLM's LM head) stay float, as GPTQ,
  QuaRot and llm-compressor leave them; the decoder-LLM recipes set it.
* `act_matmuls=false`: MatMuls of two activations (attention scores Q·Kᵀ, probabilities·V) stay float; only
  linears with a constant weight are quantized (decoder-LLM recipes: the attention inputs are the KV cache's
  business, docs/methods/per-token.md).
* `act_granularity`: `tensor` (the default: static per-tensor asymmetric from the calibrated range), `token`
  (dynamic per-token quantizers, `QuantSpec.per_token`: the scale of every row is computed in the graph,
  symmetric unless `act_symmetric=false`, range scaled by `act_clip_ratio`; no calibrated range needed;
  `act_clip_ratio=search` picks the ratio per site on the calibration data, token_clip_sites.py; a value
  carrying a learned ratio, `quant_meta.set_learned_clip_ratio` (flatquant), keeps that one) or
  `none` (activations stay float: weight-only quantization, e.g. W4A16). With `token` or `none` the pass
  does not require CALIBRATED.

The pass only annotates values; `qcompile.runtime.qdq` writes the QDQ nodes. It approximates the float model,
so it is LOSSY; it requires CALIBRATED and establishes QUANTIZED.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.errors import InputError
from qcompile.ir import quant_meta
from qcompile.ir.properties import Property
from qcompile.passes.analysis.calibrate import DEFAULT_OP_TYPES, parse_op_types
from qcompile.passes.quantize.gptq_weights import gptq_round_weights
from qcompile.passes.quantize.params import (
    SEARCHES,
    asymmetric_spec,
    grouped_weight_spec,
    symmetric_per_channel_spec,
)
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.pass_base import Numerics, Pass, PassResult
from qcompile.pipeline.registry import register_pass

__all__ = ["QuantizeUniformPass", "weight_channel_axis", "weight_reduction_axis", "ACT_GRANULARITIES"]

WEIGHT_DTYPES = ("uint8", "int8")
WEIGHT_SEARCHES = (*SEARCHES, "gptq")
ACT_GRANULARITIES = ("tensor", "token", "none")


def weight_reduction_axis(node: ir.Node, rank: int) -> int:
    """The input-channel (reduction, K) axis of the weight input 1 of a MatMul/Gemm."""
    if node.op_type == "Gemm":
        return 1 if node.attributes.get_int("transB", 0) else 0
    return rank - 2


def weight_channel_axis(node: ir.Node, input_index: int, rank: int) -> int | None:
    """Output-channel axis of constant input `input_index` of `node`, or None for per-tensor."""
    if input_index != 1 or rank < 2:
        return None
    if node.op_type == "Gemm":
        trans_b = node.attributes.get_int("transB", 0)
        return 0 if trans_b else 1
    return rank - 1


@register_pass("quantize")
class QuantizeUniformPass(Pass):
    """Attach uniform quantizers: weights per-channel symmetric, activations per-tensor asymmetric."""

    requires = frozenset({Property.CALIBRATED})
    establishes = frozenset({Property.QUANTIZED})
    numerics = Numerics.LOSSY

    def __init__(
        self,
        weight_bits: int = 8,
        act_bits: int = 8,
        op_types: str | tuple[str, ...] = DEFAULT_OP_TYPES,
        weight_dtype: str = "uint8",
        keep_float: str | tuple[str, ...] = (),
        weight_search: str = "minmax",
        weight_group: int = 0,
        weight_symmetric: bool = True,
        act_granularity: str = "tensor",
        act_symmetric: bool | None = None,
        act_clip_ratio: float | str = 1.0,
        gptq_sequential: bool = True,
        gptq_act_order: bool = True,
        keep_head_float: bool = False,
        act_matmuls: bool = True,
        group_clip: bool = True,
        context: PipelineContext | None = None,
    ) -> None:
        for label, bits in (("weight_bits", weight_bits), ("act_bits", act_bits)):
            if not 2 <= int(bits) <= 8:
                raise ValueError(f"{label} must be in 2..8, got {bits}")
        if weight_dtype not in WEIGHT_DTYPES:
            raise ValueError(f"weight_dtype must be one of {', '.join(WEIGHT_DTYPES)}, got {weight_dtype}")
        self.weight_bits = int(weight_bits)
        self.act_bits = int(act_bits)
        self.op_types = parse_op_types(op_types)
        self.weight_dtype = weight_dtype
        self.keep_float = parse_op_types(keep_float) if keep_float else ()
        if weight_search not in WEIGHT_SEARCHES:
            raise ValueError(f"weight_search must be one of {', '.join(WEIGHT_SEARCHES)}, got {weight_search}")
        self.weight_search = weight_search
        if int(weight_group) < 0:
            raise ValueError(f"weight_group must be 0 (per channel) or a group size >= 1, got {weight_group}")
        self.weight_group = int(weight_group)
        self.weight_symmetric = bool(weight_symmetric)
        if weight_search == "mse" and not self.weight_symmetric and not self.weight_group:
            raise ValueError("weight_search=mse with weight_symmetric=false needs weight_group")
        if not self.weight_symmetric and not self.weight_group:
            raise ValueError("weight_symmetric=false is for per-group weights (set weight_group)")
        if act_granularity not in ACT_GRANULARITIES:
            raise ValueError(f"act_granularity must be one of {', '.join(ACT_GRANULARITIES)}, got {act_granularity}")
        self.act_granularity = act_granularity
        if act_symmetric is not None and act_granularity != "token":
            raise ValueError("act_symmetric applies to act_granularity=token (per-tensor activations are asymmetric)")
        self.act_symmetric = True if act_symmetric is None else bool(act_symmetric)
        self.act_clip_search = act_clip_ratio == "search"
        if not self.act_clip_search and not (isinstance(act_clip_ratio, (int, float)) and 0 < act_clip_ratio <= 1):
            raise ValueError(f"act_clip_ratio must be in (0, 1] or 'search', got {act_clip_ratio!r}")
        if act_clip_ratio != 1.0 and act_granularity != "token":
            raise ValueError("act_clip_ratio applies to act_granularity=token")
        self.act_clip_ratio = 1.0 if self.act_clip_search else float(act_clip_ratio)
        self.gptq_sequential = bool(gptq_sequential)
        self.gptq_act_order = bool(gptq_act_order)
        self.keep_head_float = bool(keep_head_float)
        self.act_matmuls = bool(act_matmuls)
        self.group_clip = bool(group_clip)
        if act_granularity != "tensor":  # no calibrated range is read
            self.requires = frozenset()
        self.context = context or PipelineContext()

    def _group_search(self) -> str:
        """The per-group grid search: GPTQ fits MSE-clipped groups (`group_clip=false`: min/max)."""
        if self.weight_search != "gptq":
            return self.weight_search
        return "mse" if self.group_clip else "minmax"

    def _group_fit(self, weight: np.ndarray) -> quant_meta.QuantSpec:
        """One group's spec (weight G×N, reduction axis 0) as `_weight_spec` would fit it."""
        return self._grouped_spec(weight, 0, weight.shape[0])

    def _grouped_spec(self, weight: np.ndarray, axis: int, group_size: int) -> quant_meta.QuantSpec:
        return grouped_weight_spec(
            weight,
            axis=axis,
            group_size=group_size,
            bits=self.weight_bits,
            symmetric=self.weight_symmetric,
            unsigned_container=self.weight_dtype == "uint8",
            search=self._group_search(),
        )

    def _weight_spec(self, node: ir.Node, index: int, value: ir.Value) -> quant_meta.QuantSpec:
        array = value.const_value.numpy()
        axis = weight_channel_axis(node, index, array.ndim)
        if self.weight_group and axis is not None:
            reduction = weight_reduction_axis(node, array.ndim)
            if array.shape[reduction] < self.weight_group:
                raise InputError(
                    f"quantize: weight '{value.name}' of node '{node.name}' has {array.shape[reduction]} input "
                    f"channels, fewer than one group of weight_group={self.weight_group} "
                    "(choose a smaller group, or 0 for per channel)"
                )
            return self._grouped_spec(array, reduction, self.weight_group)
        search = "mse" if self.weight_search == "gptq" else self.weight_search
        return symmetric_per_channel_spec(
            array, axis=axis, bits=self.weight_bits, unsigned_container=self.weight_dtype == "uint8", search=search
        )

    def _search_clip_ratios(self, model: ir.Model, sites: list[ir.Value]) -> dict[str, float]:
        from qcompile.passes.quantize.token_clip_sites import search_site_clip_ratios

        ratios = search_site_clip_ratios(model, sites, self.op_types, self.act_bits, self.act_symmetric, self.context)
        for value in sites:
            spec = quant_meta.QuantSpec.per_token(self.act_bits, self.act_symmetric, ratios[value.name])
            quant_meta.set_quant(value, spec)
        return ratios

    def call(self, model: ir.Model) -> PassResult:
        weights, activations, kept_float, skipped = 0, 0, 0, {}
        nodes = 0
        weight_sites: list[tuple[ir.Node, int, ir.Value]] = []
        token_sites: list[ir.Value] = []
        learned_sites: dict[str, float] = {}
        initializers = model.graph.initializers
        outputs = set(model.graph.outputs)
        for node in model.graph:
            if node.op_type not in self.op_types or node.domain not in ("", "ai.onnx"):
                continue
            nodes += 1
            if not self.act_matmuls and all(v is not None and v.const_value is None for v in node.inputs[:2]):
                kept_float += 1
                skipped[node.name] = "kept float: a product of two activations (act_matmuls=false)"
                continue
            if self.keep_head_float and any(o in outputs for o in node.outputs):
                kept_float += 1
                skipped[node.name] = "kept float: its output is a graph output (the model's head)"
                continue
            for index, value in enumerate(node.inputs[:2]):
                if value is None or quant_meta.get_quant(value) is not None:
                    continue
                if value.dtype not in (None, ir.DataType.FLOAT):
                    skipped[node.name] = f"input {index} is {value.dtype}, not float32"
                    continue
                if value.const_value is not None:
                    if value.name not in initializers:
                        skipped[node.name] = f"constant input {index} is not an initializer"
                        continue
                    quant_meta.set_quant(value, self._weight_spec(node, index, value))
                    weight_sites.append((node, index, value))
                    weights += 1
                    continue
                producer = value.producer()
                if self.act_granularity == "none" or producer is not None and producer.op_type in self.keep_float:
                    kept_float += 1
                    continue
                if self.act_granularity == "token":
                    learned = quant_meta.get_learned_clip_ratio(value)
                    ratio = self.act_clip_ratio if learned is None else learned
                    spec = quant_meta.QuantSpec.per_token(self.act_bits, self.act_symmetric, ratio)
                    quant_meta.set_quant(value, spec)
                    if learned is None:
                        token_sites.append(value)
                    else:
                        learned_sites[value.name] = learned
                    activations += 1
                    continue
                tensor_range = quant_meta.get_range(value)
                if tensor_range is None:
                    skipped[node.name] = f"input {index} '{value.name}' has no calibrated range"
                    continue
                quant_meta.set_quant(value, asymmetric_spec(tensor_range.lo, tensor_range.hi, self.act_bits))
                activations += 1
        if nodes == 0:  # (a second run over an already quantized model finds nodes but changes nothing)
            raise InputError(f"pass 'quantize' found no {'/'.join(self.op_types)} node to quantize")
        stats = {"weights": weights, "activations": activations, "kept_float": kept_float, "skipped": skipped}
        if self.act_clip_search and token_sites:
            stats["act_clip_ratios"] = self._search_clip_ratios(model, token_sites)
        if learned_sites:
            stats["learned_act_clip_ratios"] = learned_sites
        if self.weight_search == "gptq" and weight_sites:
            if self.context.calibration is None:
                raise InputError("quantize with weight_search=gptq needs calibration data (none was given)")
            stats["gptq"] = gptq_round_weights(
                model,
                weight_sites,
                self.weight_bits,
                self.context,
                group_fit=self._group_fit if self.weight_group else None,
                sequential=self.gptq_sequential,
                act_order=self.gptq_act_order,
            )
        return PassResult(model, modified=weights + activations > 0, stats=stats)
