"""Zoo benchmark: every zoo model under recipes fp, w8a8, w6a6, w4a4, side by side with ONNX Runtime.

Writes benchmarks/results/<model>_<recipe>.json (the job's report) and benchmarks/results/zoo.md.
ONNX Runtime's own quantizers are built and scored once per model (with the w8a8 run: they do not
depend on the recipe). Latency: medians over alternating blocks of runs in one process, batch 1, 2 threads.
It reports; it asserts nothing.

    python benchmarks/run_zoo.py [--models dinov2-s,minilm-l6] [--recipes fp,w8a8,w6a6,w4a4]
                                 [--calib-samples 32] [--eval-samples dinov2-s=500,minilm-l6=1000]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

from qcompile.job import JobConfig, run_job

RESULTS = Path(__file__).resolve().parent / "results"


def _eval_samples(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in (item.split("=") for item in text.split(","))}


def _row(report: dict) -> str:
    metric = report["metric"]
    latency = report["latency_ms"]
    fp_ms = latency["ort_fp32"]

    def ms(label):
        value = latency.get(label)
        return "-" if value is None else f"{value:.1f} ({fp_ms / value:.2f}x)"

    def score(label):
        return "-" if label not in metric else f"{metric[label]:.2f}"

    cal = report["calibration"]
    return (
        f"| {report['model']} | {report['passes']} | {metric['name']} | {metric['fp']:.2f} "
        f"| {metric['quantized']:.2f} | "
        f"{metric['drop']:+.2f} | {score('ort_int8_static')} | {score('ort_int8_dynamic')} | {fp_ms:.1f} "
        f"| {ms('qcompile')} | "
        f"{ms('ort_int8_static')} | {ms('ort_int8_dynamic')} | {cal['seconds']:.1f} | "
        f"{'-' if cal['peak_rss_mb'] is None else round(cal['peak_rss_mb'])} |"
    )


HEADER = (
    "| model | recipe | metric | FP | qcompile | drop | ORT static | ORT dynamic | FP32 ms | qcompile ms (vs FP32) | "
    "ORT static ms | ORT dynamic ms | calib s | calib peak RSS MB |\n|" + "---|" * 14
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="dinov2-s,minilm-l6")
    parser.add_argument("--recipes", default="fp,w8a8,w6a6,w4a4")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--eval-samples", type=_eval_samples, default=_eval_samples("dinov2-s=500,minilm-l6=1000"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in args.models.split(","):
        for recipe in args.recipes.split(","):
            print(f"== zoo:{model} {recipe}", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory() as out:
                report = run_job(
                    JobConfig(
                        model=f"zoo:{model}",
                        passes=recipe,
                        output_dir=Path(out),
                        calib_samples=args.calib_samples,
                        eval_samples=args.eval_samples.get(model, 500),
                        seed=args.seed,
                        progress=False,
                        baselines=recipe == "w8a8",
                    ),
                    log=lambda message: print(message, file=sys.stderr, flush=True),
                )
            slug = recipe.replace(":", "_").replace("=", "-")
            (RESULTS / f"{model}_{slug}.json").write_text(json.dumps(report, indent=2) + "\n")
            rows.append(_row(report))
            print(rows[-1], flush=True)
    table = "\n".join([HEADER, *rows])
    text = (
        "# Zoo benchmark\n\n"
        f"`python benchmarks/run_zoo.py --models {args.models} --recipes {args.recipes} "
        f"--calib-samples {args.calib_samples}`"
        f" (eval samples {args.eval_samples}, seed {args.seed}) on {platform.processor() or platform.machine()}, "
        "ONNX Runtime CPU, 2 intra-op threads, batch 1, median of 15 runs in alternating blocks of 3 "
        "(each after a discarded run) after 3 warm-ups.\n\n"
        f"{table}\n\nThe fp rows time two identical float models: their ratio shows this machine's latency noise.\n"
    )
    (RESULTS / "zoo.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
