"""Apply GPTQ (gptq.py) to every constant weight the `quantize` pass annotated.

For each annotated weight W of a linear y = x W (MatMul B, or Gemm B with transA = 0), the input x is
streamed over the calibration data once for all linears (`calibration.gram.Gram`: H = Σ xᵀx; linears
reading the same x share one H), then W is rounded onto its already chosen per-channel grid by GPTQ and
the initializer replaced by Ŵ = (codes − z)·s, so that the QDQ export, which re-quantizes W with the
same spec, recovers exactly these codes (checked here).

The Hessians come from the model as it stands (float activations, no quantizers yet): all linears are
rounded from one calibration pass instead of layer by layer on the outputs of already quantized layers
as the reference does. Weights that cannot take GPTQ keep their round-to-nearest codes and are listed
with the reason: shared by several nodes, batched (rank ≠ 2), a transposed Gemm input, a constant input.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from tqdm.auto import tqdm

from qcompile.calibration.gram import Gram
from qcompile.calibration.runner import stream_statistics
from qcompile.ir import quant_meta, replace_const
from qcompile.passes.quantize.gptq import gptq_codes, layer_loss
from qcompile.pipeline.context import PipelineContext

__all__ = ["gptq_round_weights"]


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


def gptq_round_weights(
    model: ir.Model, sites: list[tuple[ir.Node, int, ir.Value]], bits: int, context: PipelineContext
) -> dict:
    """GPTQ-round every weight in `sites` (each already carrying its QuantSpec); returns stats."""
    layouts, skipped = {}, {}
    for node, index, value in sites:
        layout = _site_layout(node, index, value)
        if isinstance(layout, str):
            skipped[node.name or value.name] = layout
        else:
            layouts[value.name] = (node, value, *layout)
    names = sorted({x.name for _, _, x, _ in layouts.values()})
    grams, _ = stream_statistics(
        model,
        context.calibration,
        names,
        lambda _: Gram(),
        channel_stats=False,
        threads=context.threads,
        progress=context.progress,
    )
    ratios = []
    for node, value, x, transposed in tqdm(
        layouts.values(), desc="gptq", unit="linear", disable=not context.progress, leave=False
    ):
        spec = quant_meta.get_quant(value)
        stored = value.const_value.numpy()
        weight = (stored.T if transposed else stored).astype(np.float64)  # K×N
        hessian = grams[x.name].matrix
        if hessian is None or hessian.shape[0] != weight.shape[0]:
            skipped[node.name or value.name] = (
                f"input '{x.name}' has {None if hessian is None else hessian.shape[0]} channels, weight has "
                f"{weight.shape[0]} rows"
            )
            continue
        step = spec.scale.astype(np.float64).reshape(-1)
        codes = gptq_codes(weight, hessian, step, bits)
        nearest = np.clip(np.rint(weight / step), -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
        ratios.append(
            layer_loss(weight, codes * step, hessian) / max(layer_loss(weight, nearest * step, hessian), 1e-300)
        )
        stored_codes = (codes.T if transposed else codes).astype(np.int64) + spec.zero_point.reshape(
            (-1, 1) if transposed else (1, -1)
        )
        rounded = spec.dequantize(stored_codes)
        if not np.array_equal(spec.quantize(rounded), stored_codes):
            raise AssertionError(f"gptq: re-quantizing '{value.name}' does not recover its codes")
        replace_const(value, rounded)
    stats = {"linears": len(ratios), "samples": context.calibration.samples, "skipped": skipped}
    if ratios:
        stats["loss_vs_nearest"] = {
            "median": float(np.median(ratios)),
            "min": float(np.min(ratios)),
            "max": float(np.max(ratios)),
        }
    return stats
