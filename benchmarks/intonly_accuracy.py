"""Accuracy of the integer-only models (issue 4): float, QDQ and integer-only artifacts of each zoo model,
scored side by side on the same evaluation samples. Reports; asserts nothing.

Rows per model: the float model; `w8a8` as QDQ; `w8a8,intonly` with the default (per-site measured)
kernel choice and with all-I-BERT / all-I-ViT kernels forced; `repq` as QDQ and `repq,intonly`. Every
integer model is checked for float tensors between its input quantizers and output dequantizers.
Writes benchmarks/results/intonly_accuracy.md and .json.

    python benchmarks/intonly_accuracy.py [--models dinov2-s,minilm-l6] [--calib-samples 32]
                                          [--eval-samples dinov2-s=500,minilm-l6=1000]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import onnx_ir as ir

from qcompile import zoo
from qcompile.backends.onnx import qdq, runtime
from qcompile.passes.lowering.intonly import float_values
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.run import run_passes

RESULTS = Path(__file__).resolve().parent / "results"
ROWS = [
    ("w8a8", "QDQ"),
    ("w8a8,intonly", "integer, kernels chosen per site (default)"),
    ("w8a8,intonly:gelu=ibert:softmax=ibert", "integer, I-BERT kernels everywhere"),
    ("w8a8,intonly:gelu=shiftgelu:softmax=shiftmax", "integer, I-ViT kernels everywhere"),
    ("repq", "QDQ"),
    ("repq,intonly", "integer, kernels chosen per site (default)"),
]


def _eval_samples(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in (item.split("=") for item in text.split(","))}


def _build(entry, passes: str, calib_samples: int, threads: int) -> tuple[bytes, dict]:
    model = entry.load()
    context = PipelineContext(calibration=entry.calibration(calib_samples, 0), progress=False, threads=threads)
    records = run_passes(model, passes, context=context)
    last = records[-1]
    info = {"passes": [r["name"] for r in records]}
    if last["name"] == "intonly":
        info["float_values"] = float_values(model)
        info["kernels"] = dict(collections.Counter(n.op_type for n in model.graph if n.domain == "qcompile"))
        info["variants"] = {kind: dict(collections.Counter(sites.values())) for kind, sites in last["stats"]["variants"].items()}
        return ir.serde.serialize_model(model).SerializeToString(), info
    return ir.serde.serialize_model(qdq.to_qdq(model)).SerializeToString(), info


def _runner(session):
    name = session.get_outputs()[0].name
    return lambda feeds: session.run([name], feeds)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="dinov2-s,minilm-l6")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--eval-samples", type=_eval_samples, default=_eval_samples("dinov2-s=500,minilm-l6=1000"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    lines = [
        "# Integer-only accuracy",
        "",
        f"`python benchmarks/intonly_accuracy.py --models {args.models} --calib-samples {args.calib_samples}` "
        f"(eval samples {args.eval_samples}, seed 0; every row scored on the same samples in one pass).",
        "",
        "| model | passes | artifact | metric | FP | score | drop | float tensors | GELU / softmax kernels |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    results = {}
    for name in args.models.split(","):
        entry = zoo.get(name)
        runners = {"fp": _runner(runtime.make_session(entry.load(), threads=args.threads))}
        infos = {}
        for passes, label in ROWS:
            print(f"== zoo:{name} {passes}", file=sys.stderr, flush=True)
            start = time.perf_counter()
            data, info = _build(entry, passes, args.calib_samples, args.threads)
            info.update(label=label, build_seconds=time.perf_counter() - start)
            infos[passes] = info
            runners[passes] = _runner(runtime.make_session(data, threads=args.threads))
        scores = entry.evaluate(runners, args.eval_samples.get(name, 500), 0, progress=True)
        metric = entry.metric_name
        fp = scores["fp"][metric]
        for passes, info in infos.items():
            score = scores[passes][metric]
            floats = "-" if "float_values" not in info else str(len(info["float_values"]))
            variants = "-" if "variants" not in info else " / ".join(", ".join(f"{v}×{n}" for v, n in info["variants"][k].items()) or "forced" for k in ("gelu", "softmax"))
            lines.append(f"| zoo:{name} | `{passes}` | {info['label']} | {metric} | {fp:.2f} | {score:.2f} | {fp - score:+.2f} | {floats} | {variants} |")
            print(lines[-1], flush=True)
        results[name] = {"metric": metric, "eval_samples": args.eval_samples.get(name, 500), "scores": scores, "rows": infos}
    lines += ["", "drop = FP − score (positive is worse). 'forced' = the variant given in the pass options."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "intonly_accuracy.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "intonly_accuracy.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
