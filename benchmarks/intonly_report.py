"""What the integer-only lowering costs, where, and why (issue 4). Reports; asserts nothing.

Every figure quoted in docs/methods/intonly.md comes from here, written to
benchmarks/results/intonly_report.md:

1. kernels on synthetic inputs: softmax variants against float softmax (N(0, 3) logits, 197 tokens,
   16-bit scores); IntSqrt's wrong roots by Newton step count; ShiftGELU's normalization with I-ViT's
   31-bit factor against the 2^62 one used here; ONNX Runtime's MatMulInteger against exact integer
   arithmetic on full-range u8×s8 operands;
2. output SQNR against the float model, QDQ (`w8a8`) and `w8a8,intonly`, for the tiny encoder variants
   and the zoo models (calibration on `--calib-samples`, measured on a held-out batch, seed 1), and for
   DINOv2 with the residual grid at 16 and at 22 bits;
3. the GELU and softmax variants on the zoo models' own inputs (float model, first calibration batch):
   per site, SQNR against the exact op of what the lowered graph computes (the variant on its 16-bit
   grid, then the output quantizer of the next linear), against the 8-bit quantizer alone (QDQ's error),
   and the share of the error energy that is a per-channel bias (the same on every token);
4. MiniLM per stage: intermediates exposed as graph outputs before lowering, so the integer model
   returns them dequantized, each compared with QDQ against float.

    python benchmarks/intonly_report.py [--calib-samples 8]
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from qcompile import runtime, zoo
from qcompile.intops import isqrt
from qcompile.intops.ibert_softmax import ibert_softmax, ibert_softmax_params
from qcompile.intops.int_exp import exp_x0, int_exp_shift
from qcompile.intops.shiftgelu import GELU_SIGMOID_SLOPE, shift_gelu
from qcompile.intops.shiftmax import shiftmax
from qcompile.ir import quant_meta
from qcompile.passes.lowering import gelu_rule, softmax_rule
from qcompile.passes.lowering.intonly import IntOnlyPass
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.numerics import sqnr_db
from qcompile.pipeline.run import run_passes
from qcompile.runtime import qdq
from qcompile.testing.builders import tiny_encoder

RESULTS = Path(__file__).resolve().parent / "results"
LOWERING_MODULES = ("ranges", "intonly", "residual_rule", "conv_rule")
HELD_OUT = 16


def kernel_section() -> list[str]:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(64, 197))
    scale = np.abs(logits).max() / (2**15 - 1)
    x = np.rint(logits / scale).astype(np.int32)
    reference = softmax_rule.exact_softmax(x * scale)
    ibert = ibert_softmax(x, *ibert_softmax_params(scale), 16) / 2.0**16
    shift = shiftmax(x, exp_x0(scale), 15, 16) / 2.0**15

    grid = 4.0 / 32767
    x0 = exp_x0(GELU_SIGMOID_SLOPE * grid)
    row = np.array([[-3.0, -1.0, 0.0, 0.5, 1.0, 2.0, 3.9]])
    q = np.rint(row / grid).astype(np.int32)
    ours = shift_gelu(q, x0, 17, 8) * grid / 2**7
    m = np.maximum(q.astype(np.int64).max(-1, keepdims=True), 0)
    e1, e0 = int_exp_shift(q - m, x0, 17), int_exp_shift(-m, x0, 17)
    factor = (2**31 - 1) // np.minimum(e1 + e0, 2**31 - 1)  # I-ViT's 31-bit normalization
    ivit = q * ((e1 * factor) >> 24) * grid / 2**7

    k = 256
    a = np.full((2, k), 255, np.uint8)
    w = np.tile(np.array([[127], [127], [-127], [127]], np.int8), (k // 4, 3))
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["x", "w"], ["y"])],
        "mmi",
        [
            helper.make_tensor_value_info("x", TensorProto.UINT8, [2, k]),
            helper.make_tensor_value_info("w", TensorProto.INT8, [k, 3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [2, 3])],
    )
    session = ort.InferenceSession(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString(),
        providers=["CPUExecutionProvider"],
    )
    got = int(session.run(None, {"x": a, "w": w})[0][0, 0])
    exact = int((a.astype(np.int64) @ w.astype(np.int64))[0, 0])
    edges = sorted(
        {2**b + d for b in range(63) for d in (-1, 0, 1) if 0 <= 2**b + d <= 2**62}
        | {r * r + d for r in (3, 1000, 65535, 2**31 - 1) for d in (-1, 0, 1)}
    )
    exact_roots = np.array([math.isqrt(v) for v in edges])
    wrong = {}
    for steps in (3, 4, 5, 6):
        isqrt.STEPS = steps
        wrong[steps] = int((isqrt.int_sqrt(np.array(edges, np.int64)) != exact_roots).sum())
    isqrt.STEPS = 6
    return [
        "## Kernels (synthetic inputs)",
        "",
        "- Softmax, N(0, 3) logits over 197 tokens at 16 bits, max |error| against float: "
        f"IBertSoftmax {np.abs(ibert - reference).max():.2g}, Shiftmax {np.abs(shift - reference).max():.2g}.",
        "- ShiftGELU at a 16-bit grid (S = 4/32767, n = 17), "
        f"GELU(3.9) ≈ x·σ(1.702x) = {3.9 / (1 + math.exp(-1.702 * 3.9)):.3f}: "
        f"I-ViT's 31-bit normalization factor gives {ivit[0, -1]:.3f} (factor {int(factor[0, -1])}), "
        f"the 2^62 normalization {ours[0, -1]:.3f}.",
        f"- IntSqrt Newton steps on {len(edges)} edge values "
        "(powers of two ± 1, perfect squares ± 1 up to 2^62), wrong roots: "
        + ", ".join(f"{k} steps {v}" for k, v in wrong.items())
        + ".",
        f"- ONNX Runtime MatMulInteger, x = 255 against w = ±127 over K = {k}: {got:,} against the exact {exact:,} "
        f"({'saturated' if got != exact else 'exact'} on this CPU).",
        "",
    ]


def _set_residual_grid(grid: int) -> None:
    for name in LOWERING_MODULES:
        module = importlib.import_module(f"qcompile.passes.lowering.{name}")
        if hasattr(module, "RESIDUAL_GRID"):
            module.RESIDUAL_GRID = grid


def _outputs(load, calibration, feeds) -> tuple[dict, dict, dict]:
    """Outputs of the float model, QDQ `w8a8` and `w8a8,intonly` on `feeds`."""
    reference = runtime.run(runtime.make_session(load()), feeds)
    model = load()
    context = PipelineContext(calibration=calibration, progress=False)
    run_passes(model, "w8a8", context=context)
    fake_quant = runtime.run(runtime.make_session(qdq.to_qdq(model)), feeds)
    IntOnlyPass(context=context)(model)
    integer = runtime.run(runtime.make_session(model), feeds)
    return reference, fake_quant, integer


def _worst(reference: dict, approx: dict) -> float:
    return min(sqnr_db(reference[k], approx[k]) for k in reference)


def _per_sample(reference: dict, approx: dict) -> str:
    """min / median SQNR over the samples (rows of the first output)."""
    name = next(iter(reference))
    values = [sqnr_db(r, a) for r, a in zip(reference[name], approx[name])]
    return f"{min(values):.1f} / {float(np.median(values)):.1f}"


def model_section(calib_samples: int) -> list[str]:
    lines = [
        "## Output SQNR against float (dB)",
        "",
        "| model | QDQ w8a8 | w8a8,intonly | per sample min / median: QDQ | intonly |",
        "|---|---|---|---|---|",
    ]
    for label, options in (
        ("tiny, fused LN", {}),
        ("tiny, decomposed LN + final norm", {"decomposed_layernorm": True, "final_norm": True}),
        ("tiny, LayerScale + final norm", {"layer_scale": True, "final_norm": True}),
    ):
        tiny = tiny_encoder(**options)
        reference, fake_quant, integer = _outputs(
            lambda o=options: tiny_encoder(**o).model, tiny.calibration, tiny.feeds
        )
        lines.append(f"| {label} | {_worst(reference, fake_quant):.1f} | {_worst(reference, integer):.1f} | | |")
    for name in ("dinov2-s", "minilm-l6"):
        entry = zoo.get(name)
        feeds = entry.calibration(HELD_OUT, seed=1, batch_size=HELD_OUT).first_batch()
        grids = (
            ((2**15 - 1, "16-bit residual grid"), (2**21 - 1, "22-bit residual grid"))
            if name == "dinov2-s"
            else ((2**21 - 1, "22-bit residual grid"),)
        )
        for grid, grid_label in grids:
            _set_residual_grid(grid)
            reference, fake_quant, integer = _outputs(entry.load, entry.calibration(calib_samples, 0), feeds)
            lines.append(
                f"| zoo:{name}, {grid_label} | {_worst(reference, fake_quant):.1f} "
                f"| {_worst(reference, integer):.1f} | "
                f"{_per_sample(reference, fake_quant)} | {_per_sample(reference, integer)} |"
            )
        _set_residual_grid(2**21 - 1)
    return [
        *lines,
        "",
        f"Zoo models: {calib_samples} calibration samples, measured on {HELD_OUT} held-out samples (seed 1).",
        "",
    ]


def _bias_share(reference: np.ndarray, approx: np.ndarray) -> float:
    error = (approx - reference).reshape(-1, reference.shape[-1])
    return float((error.mean(axis=0) ** 2).sum() * len(error) / max((error**2).sum(), 1e-30))


def _spread(values: list[float], digits: int = 1) -> str:
    return f"{min(values):.{digits}f} / {float(np.median(values)):.{digits}f} / {max(values):.{digits}f}"


def site_section(calib_samples: int) -> list[str]:
    lines = [
        "## GELU and softmax variants on the zoo models' inputs",
        "",
        "Per site: the float model's input on the first calibration batch (at most 2000 rows), SQNR in dB against",
        "the exact op (min / median / max over the sites). GELU: what the lowered graph computes, the variant",
        "then the next linear's 8-bit input quantizer; `q8(exact)` is that quantizer alone, QDQ's error. Bias",
        "share: the part of the error energy that is the same on every token (per-channel mean), which the",
        "next linear turns into a bias of the residual stream.",
        "",
        "| model | op | sites | variant | SQNR dB | bias share |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("dinov2-s", "minilm-l6"):
        entry = zoo.get(name)
        model = entry.load()
        context = PipelineContext(calibration=entry.calibration(calib_samples, 0), progress=False)
        run_passes(model, "w8a8", context=context)
        gelus = [m for n in model.graph if (m := gelu_rule.match_gelu(n)) is not None]
        softmaxes = [n for n in model.graph if n.op_type == "Softmax"]
        names = [m.x.name for m in gelus] + [n.inputs[0].name for n in softmaxes]
        values = runtime.run(
            runtime.make_session(runtime.with_outputs(model, names)),
            entry.calibration(calib_samples, 0).first_batch(),
            names,
        )
        rows = {}
        for match in gelus:
            x = values[match.x.name].astype(np.float64).reshape(-1, values[match.x.name].shape[-1])[:2000]
            exact = gelu_rule.exact_gelu(x)
            spec = quant_meta.get_quant(match.output)
            q8 = spec.fake_quantize(exact).astype(np.float64)
            for variant, approx in [("q8(exact)", q8)] + [
                (v, gelu_rule.simulate(v, x, match)) for v in gelu_rule.GELU_VARIANTS
            ]:
                rows.setdefault(("GELU", variant), []).append((sqnr_db(exact, approx), _bias_share(exact, approx)))
        for node in softmaxes:
            scores = values[node.inputs[0].name].astype(np.float64)
            scores = scores.reshape(-1, scores.shape[-1])[:2000]
            exact = softmax_rule.exact_softmax(scores)
            for variant in softmax_rule.SOFTMAX_VARIANTS:
                approx = softmax_rule.simulate(variant, scores, 16)
                rows.setdefault(("softmax", variant), []).append((sqnr_db(exact, approx), _bias_share(exact, approx)))
        for (op, variant), measured in rows.items():
            db, bias = zip(*measured)
            lines.append(f"| zoo:{name} | {op} | {len(measured)} | {variant} | {_spread(db)} | {_spread(bias, 2)} |")
    return [*lines, ""]


def minilm_stages(calib_samples: int) -> list[str]:
    entry = zoo.get("minilm-l6")
    names = ["layer_norm_12", "mul_783", "sum_1", "div", "sentence_embedding"]
    feeds = entry.calibration(HELD_OUT, seed=1, batch_size=HELD_OUT).first_batch()
    reference = runtime.run(runtime.make_session(runtime.with_outputs(entry.load(), names)), feeds, names)
    model = entry.load()
    context = PipelineContext(calibration=entry.calibration(calib_samples, 0), progress=False)
    run_passes(model, "w8a8", context=context)
    fake_quant = runtime.run(runtime.make_session(runtime.with_outputs(qdq.to_qdq(model), names)), feeds, names)
    values = {o.name: o for node in model.graph for o in node.outputs}
    for name in names:
        if values[name] not in model.graph.outputs:
            model.graph.outputs.append(values[name])  # lowered and dequantized like any output
    IntOnlyPass(context=context)(model)
    integer = runtime.run(runtime.make_session(model), feeds, names)
    lines = ["## MiniLM by stage (SQNR against float, dB)", "", "| value | QDQ w8a8 | w8a8,intonly |", "|---|---|---|"]
    lines += [
        f"| `{n}` | {sqnr_db(reference[n], fake_quant[n]):.2f} | {sqnr_db(reference[n], integer[n]):.2f} |"
        for n in names
    ]
    return [
        *lines,
        "",
        "`layer_norm_12` is the last LayerNorm; `mul_783` its masked tokens, `sum_1` their sum, `div` the mean, "
        "then L2 normalization.",
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib-samples", type=int, default=8)
    args = parser.parse_args()
    lines = [f"Produced by `python benchmarks/intonly_report.py --calib-samples {args.calib_samples}`.", ""]
    lines += (
        kernel_section()
        + model_section(args.calib_samples)
        + site_section(args.calib_samples)
        + minilm_stages(args.calib_samples)
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "intonly_report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
