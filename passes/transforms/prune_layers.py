"""`prune-layers`: remove K consecutive decoder layers, chosen by the mean token cosine of layer inputs.

With x_0 … x_L the layer inputs (`layer_similarity`), pruning [i, i + K) replaces every use of x_{i+K} by x_i:
layers i … i + K − 1 no longer run, the layers after them read the stream as it was before layer i. The start
maximizes cos[i, i + K] over i = 1 … L − K − 1 (the first and the last layer are always kept, as LinearPatch's
`layer_select.py` searches), or is given (`start`).

Graph surgery, for any pre-norm stream (`stream_blocks`): the nodes that depend on x_i without passing through
x_{i+K} are the pruned layers; graph outputs they produce (a decoder's `present.{j}.*` cache outputs) are
dropped, then dead nodes, unused initializers and the graph inputs only they read (`past_key_values.{j}.*`)
go; a Shape node that read its sizes off a pruned layer's past reads them off a kept input of the same
(symbolic) shape instead. Callers that feed caches by the artifact's own input names (`kv_cache_of_session`)
need no change.

The cut and the statistics `linear-patch` needs (a_i, a_{i+K}, m_i, m_{i+K} and H) are left in `model.meta`
under `CUT_KEY` for the passes of the same run; the model's metadata records the pruned layers
(`qcompile.pruned_layers`). LOSSY.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as ir_common

from qcompile.errors import InputError
from qcompile.ir import quant_meta
from qcompile.ir.properties import Property
from qcompile.passes.transforms.layer_similarity import LayerStats, collect_layer_stats, decoder_layer_inputs
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.pass_base import Numerics, Pass, PassResult
from qcompile.pipeline.registry import register_pass

__all__ = ["PrunedCut", "PruneLayersPass", "CUT_KEY", "METADATA_KEY", "choose_start", "prune_layers"]

CUT_KEY = "qcompile.layer_cut"
METADATA_KEY = "qcompile.pruned_layers"


@dataclasses.dataclass
class PrunedCut:
    """Layers [start, start + count) were removed; `value` (x_start) now enters layer start + count."""

    value: ir.Value
    start: int
    count: int
    stats: LayerStats
    patched: bool = False  # linear-patch has put its matrix at the cut

    def scale(self, rotated: bool) -> np.ndarray:
        """LinearPatch's s = a_{start+count} / a_start per channel (m without the rotation); 1 where a_start = 0."""
        means = self.stats.abs_mean_rotated if rotated else self.stats.abs_mean
        before, after = means[self.start], means[self.start + self.count]
        return np.divide(after, before, out=np.ones_like(after), where=before > 0)


def choose_start(cosine: np.ndarray, count: int) -> tuple[int, dict[int, float]]:
    """The start i in 1 … L − K − 1 with the largest cos[i, i + K], and the score of every candidate."""
    layers = len(cosine) - 1
    scores = {i: float(cosine[i, i + count]) for i in range(1, layers - count)}
    if not scores:
        raise InputError(
            f"prune-layers cannot remove {count} of {layers} layers: the first and the last layer are always kept"
        )
    return max(scores, key=lambda i: (scores[i], -i)), scores


def _depends_on(first: ir.Value, stop: ir.Value) -> set[int]:
    """ids of the nodes that read `first`, directly or through other nodes, without passing through `stop`."""
    region: set[int] = set()
    stack = [first]
    while stack:
        value = stack.pop()
        if value is stop:
            continue
        for use in value.uses():
            if id(use.node) not in region:
                region.add(id(use.node))
                stack.extend(use.node.outputs)
    return region


def _move_shape_reads(value: ir.Value, others: list[ir.Value]) -> None:
    """Exporters read shared sizes (batch, past length) off any input of that shape: a pruned layer's past
    still read only by Shape nodes hands them to a kept input of the same dtype and (symbolic) shape."""
    uses = value.uses()
    if not uses or any(use.node.op_type != "Shape" for use in uses):
        return
    twin = next((v for v in others if v.dtype == value.dtype and v.shape is not None and v.shape == value.shape), None)
    if twin is not None:
        for use in uses:
            use.node.replace_input_with(use.idx, twin)


def _parameter_count(model: ir.Model) -> int:
    return int(sum(v.const_value.size for v in model.graph.initializers.values() if v.const_value is not None))


def prune_layers(model: ir.Model, inputs: list[ir.Value], start: int, count: int) -> dict:
    """Remove layers [start, start + count) of the stream whose layer inputs are `inputs` (module docstring)."""
    graph = model.graph
    first, after = inputs[start], inputs[start + count]
    region = _depends_on(first, after)
    used_inputs = [v for v in graph.inputs if v.uses()]
    dropped = [v for v in graph.outputs if v.producer() is not None and id(v.producer()) in region]
    before = _parameter_count(model)
    read_inside = [v for v in used_inputs if any(id(use.node) in region for use in v.uses())]
    ir.convenience.replace_all_uses_with(after, first)
    for value in dropped:
        graph.outputs.remove(value)
    ir_common.RemoveUnusedNodesPass()(model)
    for value in read_inside:
        _move_shape_reads(value, [v for v in graph.inputs if v not in read_inside])
    removed_inputs = [v for v in used_inputs if not v.uses()]
    for value in removed_inputs:
        graph.inputs.remove(value)
    return {
        "outputs_removed": [v.name for v in dropped],
        "inputs_removed": [v.name for v in removed_inputs],
        "parameters_before": before,
        "parameters_after": _parameter_count(model),
    }


@register_pass("prune-layers")
class PruneLayersPass(Pass):
    """Remove the `n` consecutive decoder layers whose input and output hidden states are most alike."""

    invalidates = frozenset({Property.CALIBRATED})
    numerics = Numerics.LOSSY

    def __init__(self, n: int = 0, start: int = -1, samples: int = 128, context: PipelineContext | None = None) -> None:
        self.count, self.start, self.samples = int(n), int(start), int(samples)
        if self.count < 1:
            raise ValueError(f"prune-layers needs n >= 1 layers to remove, got n={n}")
        if self.samples < 1:
            raise ValueError(f"prune-layers needs samples >= 1, got {samples}")
        self.context = context or PipelineContext()

    def call(self, model: ir.Model) -> PassResult:
        if model.meta.get(CUT_KEY) is not None or METADATA_KEY in model.metadata_props:
            raise InputError("prune-layers runs once per model (its layers were already pruned)")
        if quant_meta.quantized_values(model.graph):
            raise InputError("pass 'prune-layers' must run before quantization (it measures the float model)")
        inputs = decoder_layer_inputs(model)
        if isinstance(inputs, str):
            raise InputError(f"prune-layers needs a pre-norm residual stream of decoder layers: {inputs}")
        if self.context.calibration is None:
            raise InputError("prune-layers chooses its layers on calibration data (none was given)")
        layers = len(inputs) - 1
        stats = collect_layer_stats(
            model, inputs, self.context.calibration, self.samples, self.context.seed, self.context.threads,
            self.context.progress,
        )  # fmt: skip
        chosen, scores = choose_start(stats.cosine, self.count)
        if self.start >= 0:
            if self.start not in scores:
                raise InputError(
                    f"prune-layers start={self.start} is not one of 1 … {layers - self.count - 1} "
                    f"(removing {self.count} of {layers} layers, keeping the first and the last)"
                )
            chosen = self.start
        surgery = prune_layers(model, inputs, chosen, self.count)
        model.meta[CUT_KEY] = PrunedCut(inputs[chosen], chosen, self.count, stats)
        model.metadata_props[METADATA_KEY] = json.dumps({"start": chosen, "count": self.count, "layers": layers})
        result = {
            "layers": layers,
            "removed": list(range(chosen, chosen + self.count)),
            "cosine": round(scores[chosen], 6),
            "cosine_by_start": {i: round(c, 6) for i, c in scores.items()},
            "windows": stats.windows,
            "tokens": stats.tokens,
            **surgery,
        }
        return PassResult(model, modified=True, stats=result)
