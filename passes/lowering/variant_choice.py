"""Choose the softmax and GELU approximation per site by measured error (issue 4, item 3).

Shiftmax/ShiftGELU (I-ViT) were designed for quantization-aware training and I-BERT's polynomials for
accuracy; post-training, which is better depends on the site's input distribution. For every Softmax and
every GELU the float model's input is read on the first calibration batch (one ONNX Runtime run with the
sites exposed), each variant is simulated with its NumPy reference on the grid the lowering will use
(`softmax_rule.simulate`, `gelu_rule.simulate`), and the variant with the smaller mean squared error
against the float op is kept. The choices and errors go into the pass stats.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.passes.lowering import gelu_rule, softmax_rule
from qcompile.pipeline.context import PipelineContext

__all__ = ["choose_variants"]


def choose_variants(
    model: ir.Model,
    context: PipelineContext,
    softmax_nodes: list[ir.Node],
    gelu_matches: list,
    bits: int,
    max_values: int = 200_000,
) -> dict:
    """{"softmax": {output name: {"choice", "mse"}}, "gelu": {…}} measured on the first calibration
    batch; at most `max_values` values per site are used (whole rows)."""
    from qcompile import runtime

    if context.calibration is None or not (softmax_nodes or gelu_matches):
        return {"softmax": {}, "gelu": {}}
    names = [n.inputs[0].name for n in softmax_nodes] + [m.x.name for m in gelu_matches]
    session = runtime.make_session(runtime.with_outputs(model, names), threads=context.threads)
    values = runtime.run(session, context.calibration.first_batch(), names)
    choices: dict = {"softmax": {}, "gelu": {}}
    for node in softmax_nodes:
        scores = values[node.inputs[0].name].astype(np.float64)
        rows = scores.reshape(-1, scores.shape[-1])[: max(1, max_values // scores.shape[-1])]
        reference = softmax_rule.exact_softmax(rows)
        errors = {
            v: float(np.mean((softmax_rule.simulate(v, rows, bits) - reference) ** 2))
            for v in softmax_rule.SOFTMAX_VARIANTS
        }
        choices["softmax"][node.outputs[0].name] = {"choice": min(errors, key=errors.get), "mse": errors}
    for match in gelu_matches:
        x = values[match.x.name].astype(np.float64)
        rows = x.reshape(-1, x.shape[-1])[: max(1, max_values // x.shape[-1])]
        reference = gelu_rule.exact_gelu(rows)
        errors = {
            v: float(np.mean((gelu_rule.simulate(v, rows, match) - reference) ** 2)) for v in gelu_rule.GELU_VARIANTS
        }
        choices["gelu"][match.output.name] = {"choice": min(errors, key=errors.get), "mse": errors}
    return choices
