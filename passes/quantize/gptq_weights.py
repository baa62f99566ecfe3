"""Apply GPTQ (gptq.py) to every constant weight the `quantize` pass annotated.

For each annotated weight W of a linear y = x W (MatMul B, or Gemm B with transA = 0), the input x is
streamed over the calibration data (`calibration.gram.Gram`: H = Σ xᵀx; linears reading the same x share
one H), then W is rounded by GPTQ and the initializer replaced by Ŵ = (codes − z)·s, so that the QDQ export,
which re-quantizes W with the same spec, recovers exactly these codes (checked here). Per-channel grids are
kept as the quantize pass chose them; per-group grids are fit during the sweep (`gptq.gptq_grouped`) and
the spec is replaced by the fitted one.

Where the Hessians come from (`sequential`):
* **sequential** (the default where the model has a pre-norm residual stream, `gptq_blocks`): block by
  block (every attention and every MLP, then the head), each block's Hessians from the stream value that
  the already rounded blocks before it produce, as GPTQ and QuaRot run LLMs. Linears outside the blocks
  fall back to the float model's Hessians.
* **all at once** (`sequential=False`, or no residual stream): one calibration pass over the float model.

Weights that cannot take GPTQ keep their round-to-nearest codes and are listed with the reason: shared by
several nodes, batched (rank ≠ 2), a transposed Gemm input, a constant input.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir
from tqdm.auto import tqdm

from qcompile import runtime
from qcompile.calibration.gram import Gram
from qcompile.calibration.runner import stream_statistics
from qcompile.ir import quant_meta, replace_const
from qcompile.passes.quantize.gptq import ColumnGrid, gptq_codes, gptq_grouped, layer_loss
from qcompile.passes.quantize.gptq_blocks import block_model, block_nodes, stream_blocks
from qcompile.pipeline.context import PipelineContext

__all__ = ["gptq_round_weights", "GroupFit"]

GroupFit = Callable[[np.ndarray], quant_meta.QuantSpec]  # a group's weights (G×N) → its spec (scale [1, N])


def _site_layout(node: ir.Node, index: int, value: ir.Value) -> tuple[ir.Value, bool] | str:
    """(input x, weight stored as N×K) for a linear y = x W, or why GPTQ cannot take it."""
    if index != 1:
        return "the constant is the linear's first input"
    if value.const_value.numpy().ndim != 2:
        return f"weight has rank {value.const_value.numpy().ndim}, not 2"
    if len(value.uses()) != 1:
        return "weight shared by several nodes"
    if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
        return "Gemm with transA=1"
    x = node.inputs[0]
    if x is None or x.const_value is not None:
        return "input is constant"
    return x, node.op_type == "Gemm" and bool(node.attributes.get_int("transB", 0))


def _grid(spec: quant_meta.QuantSpec) -> ColumnGrid:
    """The column grid of a one-group spec (scale/zero point [1, N]), in the float32 scale export uses."""
    return ColumnGrid(
        spec.scale.astype(np.float32).astype(np.float64).reshape(-1),
        spec.zero_point.astype(np.float64).reshape(-1),
        spec.qmin,
        spec.qmax,
    )


class _Rounder:
    """Rounds one linear's weight given its Hessian; keeps the loss ratios against round-to-nearest."""

    def __init__(self, bits: int, group_fit: GroupFit | None, act_order: bool) -> None:
        self.bits, self.group_fit, self.act_order = bits, group_fit, act_order
        self.ratios: list[float] = []

    def __call__(self, value: ir.Value, transposed: bool, hessian: np.ndarray) -> None:
        spec = quant_meta.get_quant(value)
        stored = value.const_value.numpy()
        weight = (stored.T if transposed else stored).astype(np.float64)  # K×N
        nearest = spec.fake_quantize(stored).astype(np.float64)
        nearest = nearest.T if transposed else nearest
        if spec.group_size is None:
            step = spec.scale.astype(np.float64).reshape(-1)
            codes = gptq_codes(weight, hessian, step, self.bits, act_order=self.act_order)
            rounded_kn = codes * step
            stored_codes = (codes.T if transposed else codes).astype(np.int64) + spec.zero_point.reshape(
                (-1, 1) if transposed else (1, -1)
            )
        else:
            group = spec.group_size
            fit = self.group_fit
            codes, grids = gptq_grouped(weight, hessian, group, lambda w: _grid(fit(w.T)), act_order=self.act_order)
            scale = np.stack([g.scale for g in grids]).astype(np.float32)  # [groups, N]
            zero = np.stack([g.zero for g in grids]).astype(np.int32)
            spec = quant_meta.QuantSpec(
                bits=spec.bits,
                signed=spec.signed,
                scale=scale.T if transposed else scale,
                zero_point=zero.T if transposed else zero,
                axis=1 if transposed else 0,
                group_size=group,
            )
            quant_meta.set_quant(value, spec)
            stored_codes = (codes.T if transposed else codes).astype(np.int64)
            rounded_kn = None
        rounded = spec.dequantize(stored_codes)
        if not np.array_equal(spec.quantize(rounded), stored_codes):
            raise AssertionError(f"gptq: re-quantizing '{value.name}' does not recover its codes")
        if rounded_kn is None:
            rounded_kn = (rounded.T if transposed else rounded).astype(np.float64)
        self.ratios.append(layer_loss(weight, rounded_kn, hessian) / max(layer_loss(weight, nearest, hessian), 1e-300))
        replace_const(value, rounded)


def _float_hessians(model: ir.Model, names: list[str], context: PipelineContext) -> dict[str, np.ndarray | None]:
    grams, _ = stream_statistics(
        model,
        context.calibration,
        names,
        lambda _: Gram(),
        channel_stats=False,
        threads=context.threads,
        progress=context.progress,
    )
    return {name: grams[name].matrix for name in names}


def _sequential(model: ir.Model, layouts: dict, round_one: _Rounder, context: PipelineContext) -> dict | str:
    """Round the linears block by block (module docstring); returns the layouts left outside every block,
    or why the model has no blocks."""
    blocks = stream_blocks(model)
    if isinstance(blocks, str):
        return blocks
    batches = list(context.calibration.batches())
    first = block_model(model, [], [blocks[0].start])
    if isinstance(first, str):
        return first
    session = runtime.make_session(first, threads=context.threads)
    states = [runtime.run(session, feeds, [blocks[0].start.name])[blocks[0].start.name] for feeds in batches]
    pending = dict(layouts)
    for block in tqdm(blocks, desc="gptq (layer by layer)", unit="block", disable=not context.progress, leave=False):
        ends = [block.end] if block.end is not None else list(model.graph.outputs)
        nodes = block_nodes(model, [block.start], ends)
        if isinstance(nodes, str):
            return nodes
        inside = {id(n) for n in nodes}
        members = {name: layout for name, layout in pending.items() if id(layout[0]) in inside}
        feeds = [{**f, block.start.name: state} for f, state in zip(batches, states)]
        if members:
            xs = list({id(layout[2]): layout[2] for layout in members.values()}.values())
            proto = block_model(model, [block.start], xs)
            if isinstance(proto, str):
                return proto
            session = runtime.make_session(proto, threads=context.threads)
            grams = {x.name: Gram() for x in xs}
            for feed in feeds:
                for name, array in runtime.run(session, feed, list(grams)).items():
                    grams[name].update(array)
            for name, (node, value, x, transposed) in members.items():
                round_one(value, transposed, grams[x.name].matrix)
                pending.pop(name)
        if block.end is not None:
            proto = block_model(model, [block.start], [block.end])
            if isinstance(proto, str):
                return proto
            session = runtime.make_session(proto, threads=context.threads)
            states = [runtime.run(session, feed, [block.end.name])[block.end.name] for feed in feeds]
    return pending


def gptq_round_weights(
    model: ir.Model,
    sites: list[tuple[ir.Node, int, ir.Value]],
    bits: int,
    context: PipelineContext,
    group_fit: GroupFit | None = None,
    sequential: bool = True,
    act_order: bool = True,
) -> dict:
    """GPTQ-round every weight in `sites` (each already carrying its QuantSpec); returns stats.
    `group_fit` fits a per-group spec from one group's weights (needed when the specs are per group)."""
    layouts, skipped = {}, {}
    for node, index, value in sites:
        layout = _site_layout(node, index, value)
        if isinstance(layout, str):
            skipped[node.name or value.name] = layout
        elif quant_meta.get_quant(value).group_size is not None and group_fit is None:
            skipped[node.name or value.name] = "per-group spec without a group fit"
        else:
            layouts[value.name] = (node, value, *layout)
    round_one = _Rounder(bits, group_fit, act_order)
    hessians_from = "float model, all linears at once"
    if sequential and layouts:
        left = _sequential(model, layouts, round_one, context)
        if isinstance(left, str):
            hessians_from = f"float model, all linears at once (not layer by layer: {left})"
        else:
            hessians_from = "layer by layer" + (
                f" ({len(left)} linears outside the blocks: float model)" if left else ""
            )
            layouts = left
    if layouts:
        names = sorted({x.name for _, _, x, _ in layouts.values()})
        hessians = _float_hessians(model, names, context)
        for node, value, x, transposed in tqdm(
            layouts.values(), desc="gptq", unit="linear", disable=not context.progress, leave=False
        ):
            hessian = hessians[x.name]
            if hessian is None or hessian.shape[0] != (value.const_value.shape[1 if transposed else 0]):
                skipped[node.name or value.name] = (
                    f"input '{x.name}' has {None if hessian is None else hessian.shape[0]} channels, weight has "
                    f"{value.const_value.shape[1 if transposed else 0]} rows"
                )
                continue
            round_one(value, transposed, hessian)
    ratios = round_one.ratios
    stats = {
        "linears": len(ratios),
        "samples": context.calibration.samples,
        "hessians": hessians_from,
        "act_order": act_order,
        "skipped": skipped,
    }
    if ratios:
        stats["loss_vs_nearest"] = {
            "median": float(np.median(ratios)),
            "min": float(np.min(ratios)),
            "max": float(np.max(ratios)),
        }
    return stats
