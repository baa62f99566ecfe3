"""Accuracy of the integer-only models (issue 4): float, QDQ and integer-only artifacts of each zoo model,
scored side by side on the same evaluation samples. Reports; asserts nothing.

Rows per model: the float model; `w8a8` as QDQ; `w8a8,intonly` with the default (per-site measured)
kernel choice, and (models in --forced-kernels) with all-I-BERT / all-I-ViT kernels forced; `repq` as
QDQ and `repq,intonly`. Each model's results replace its entry in the saved JSON. Every
integer model is checked for float tensors between its input quantizers and output dequantizers.
Drops come with their paired standard error (`qcompile.zoo.paired`): samples the float model got right
and the row wrong (lost) and the reverse (gained).

Integer models are scored through `float64_matmul_twin` (ONNX Runtime's int32 MatMul is a naive loop;
the twin's float64 GEMM gives the same integers faster); each twin is first checked bit
for bit against the integer model itself on real inputs, and the run stops if they differ.
Writes benchmarks/results/intonly_accuracy.md and .json.

    python benchmarks/intonly_accuracy.py [--models dinov2-s,minilm-l6] [--calib-samples 32]
                                          [--eval-samples dinov2-s=2000,minilm-l6=2000] [--forced-kernels minilm-l6]
    python benchmarks/intonly_accuracy.py --render-only     # rewrite the .md from the saved .json
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from qcompile import runtime, zoo
from qcompile.backends.onnx.float64_matmul import float64_matmul_twin
from qcompile.passes.lowering.intonly import float_values
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.run import run_passes
from qcompile.runtime import qdq
from qcompile.zoo.paired import drop_interval

RESULTS = Path(__file__).resolve().parent / "results"
ROWS = [
    ("w8a8", "QDQ"),
    ("w8a8,intonly", "integer, kernels chosen per site (default)"),
    ("repq", "QDQ"),
    ("repq,intonly", "integer, kernels chosen per site (default)"),
]
FORCED_ROWS = [
    ("w8a8,intonly:gelu=ibert:softmax=ibert", "integer, I-BERT kernels everywhere"),
    ("w8a8,intonly:gelu=shiftgelu:softmax=shiftmax", "integer, I-ViT kernels everywhere"),
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
        info["variants"] = {
            kind: dict(collections.Counter(sites.values())) for kind, sites in last["stats"]["variants"].items()
        }
        return ir.serde.serialize_model(model).SerializeToString(), info
    return ir.serde.serialize_model(qdq.to_qdq(model)).SerializeToString(), info


def _runner(session):
    name = session.get_outputs()[0].name
    return lambda feeds: session.run([name], feeds)[0]


def _scoring_session(data: bytes, info: dict, check_feeds: dict, threads: int):
    """A session for a built artifact; integer models run as their float64-MatMul twin, checked bit for bit."""
    if "float_values" not in info:
        return runtime.make_session(data, threads=threads)
    integer = runtime.make_session(data, threads=threads)
    twin_proto, rewritten = float64_matmul_twin(onnx.load_from_string(data))
    twin = runtime.make_session(twin_proto, threads=threads)
    expected, got = runtime.run(integer, check_feeds), runtime.run(twin, check_feeds)
    if any(not np.array_equal(expected[k], got[k]) for k in expected):
        raise SystemExit("float64 MatMul twin differs from the integer model; not scoring with it")
    info["twin"] = {"matmuls_rewritten": rewritten, "bit_exact_samples": len(next(iter(check_feeds.values())))}
    return twin


def _render(results: dict) -> list[str]:
    lines = [
        "# Integer-only accuracy",
        "",
        "Seed 0; every row of a model scored on the same samples in one pass. Produced per model by:",
        "",
        *(f"    {result['command']}" for result in results.values()),
        "",
        "| model | passes | artifact | metric | FP | score | drop ± SE | lost / gained | other metrics | float ops "
        "| GELU / softmax kernels |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        metric, scores = result["metric"], result["scores"]
        fp = scores["fp"][metric]
        for passes, info in result["rows"].items():
            row = scores[passes]
            if "lost" in row:
                drop, error = drop_interval(row["lost"], row["gained"], result["eval_samples"])
                paired, changes = f"{drop:+.2f} ± {error:.2f}", f"{row['lost']} / {row['gained']}"
            else:  # saved by an earlier version of this script
                paired, changes = f"{fp - row[metric]:+.2f}", "-"
            others = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in (metric, "lost", "gained")) or "-"
            floats = "-" if "float_values" not in info else str(len(info["float_values"]))
            variants = (
                "-"
                if "variants" not in info
                else " / ".join(
                    ", ".join(f"{v}×{n}" for v, n in info["variants"][k].items()) or "forced"
                    for k in ("gelu", "softmax")
                )
            )
            lines.append(
                f"| zoo:{name} | `{passes}` | {info['label']} | {metric} | {fp:.2f} | {row[metric]:.2f} | {paired} "
                f"| {changes} | {others} | {floats} | {variants} |"
            )
    samples = ", ".join(f"{name}: {result['eval_samples']}" for name, result in results.items())
    return [
        *lines,
        "",
        f"Evaluation samples: {samples}. drop = FP − score (positive is worse), ± its paired standard error; "
        "lost / gained: samples the float model got right and the row wrong, and the reverse; "
        "other metrics: cosine of the",
        "output embedding to the float model's (minilm-l6). 'forced' = the variant given in the pass options;",
        "float ops = nodes computing a float tensor between the input quantizers and the output dequantizers.",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="dinov2-s,minilm-l6")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--eval-samples", type=_eval_samples, default=_eval_samples("dinov2-s=2000,minilm-l6=2000"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--forced-kernels", default="minilm-l6", help="models that also get the all-I-BERT and all-I-ViT rows"
    )
    parser.add_argument("--render-only", action="store_true", help="rewrite the .md from the saved .json")
    args = parser.parse_args()
    saved = RESULTS / "intonly_accuracy.json"
    results = (
        json.loads(saved.read_text()) if saved.exists() else {}
    )  # one entry per model, each run replaces its models
    if not args.render_only:
        for name in args.models.split(","):
            command = (
                f"python benchmarks/intonly_accuracy.py --models {name} --calib-samples {args.calib_samples} "
                f"--eval-samples {name}={args.eval_samples.get(name, 500)} "
                f"--forced-kernels {name if name in args.forced_kernels.split(',') else 'none'}"
            )
            rows = ROWS[:2] + (FORCED_ROWS if name in args.forced_kernels.split(",") else []) + ROWS[2:]
            entry = zoo.get(name)
            runners = {"fp": _runner(runtime.make_session(entry.load(), threads=args.threads))}
            infos = {}
            check_feeds = entry.calibration(8, 1, batch_size=8).first_batch()
            for passes, label in rows:
                print(f"== zoo:{name} {passes}", file=sys.stderr, flush=True)
                start = time.perf_counter()
                data, info = _build(entry, passes, args.calib_samples, args.threads)
                info.update(label=label, build_seconds=time.perf_counter() - start)
                infos[passes] = info
                runners[passes] = _runner(_scoring_session(data, info, check_feeds, args.threads))
            scores = entry.evaluate(runners, args.eval_samples.get(name, 500), 0, progress=True)
            results[name] = {
                "command": command,
                "metric": entry.metric_name,
                "eval_samples": args.eval_samples.get(name, 500),
                "scores": scores,
                "rows": infos,
            }
            RESULTS.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(results, indent=2) + "\n")
    lines = _render(results)
    (RESULTS / "intonly_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
