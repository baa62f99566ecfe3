"""qcompile's QDQ artifact against ONNX Runtime's own static QDQ, in ONNX Runtime on this CPU.

For each zoo model (default dinov2-s and minilm-l6), in one process with 2 intra-op threads:
ORT FP32; ORT `quantize_static` QDQ (`backends.onnx.ort_baselines`: per-channel int8 weights with
reduce_range, uint8 activations, MinMax); qcompile `w8a8` exported in the uint8 form (`int8_weights=False`,
the form every export wrote before: u8×u8 kernels) and in the int8 form (`int8_weights=True`: int8 weight
codes, u8×s8 kernels; what `export` chooses on CPUs with VNNI/AMX, docs/qdq-export.md).
Accuracy: every session scored by the zoo entry's `evaluate` on the same evaluation samples in this run.
Latency: `measure_latency` (medians over alternating blocks after warm-up, pauses between blocks) on the
entry's batch-1 latency input. The two qcompile forms are also compared output for output.

    QCOMPILE_CACHE=$HOME/.cache/qcompile .venv/bin/python benchmarks/qdq_speed.py

writes benchmarks/results/qdq_speed.md and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import qcompile
from qcompile import runtime, zoo
from qcompile.backends.onnx import export, ort_baselines
from qcompile.backends.onnx.kernels import EXACT_INT8_FLAGS, cpu_flags, int8_weights_exact
from qcompile.ir import clone_model
from qcompile.report.environment import CPU_FLAGS
from qcompile.report.latency import measure_latency
from qcompile.runtime.cpu import cpu_name

RESULTS = Path(__file__).parent / "results"
LABELS = {
    "ort_fp32": "ORT FP32",
    "ort_int8_static": "ORT quantize_static QDQ",
    "qcompile_u8": "qcompile QDQ, uint8 form (--qdq-weights uint8)",
    "qcompile_s8": "qcompile QDQ, int8 form (--qdq-weights int8, auto here)",
}


def _runner(session):
    output = session.get_outputs()[0].name
    return lambda feeds: runtime.run(session, feeds, [output])[output]


def measure(name: str, calib: int, samples: int, rounds: int, threads: int, seed: int, folder: Path) -> dict:
    entry = zoo.get(name)
    float_model = entry.load()
    calibration = entry.calibration(calib, seed)
    model = clone_model(float_model)
    context = qcompile.PipelineContext(calibration=calibration, seed=seed, progress=False)
    qcompile.run_passes(model, "w8a8", context=context, check_numerics=False)
    paths = {
        "qcompile_u8": export(model, folder / f"{name}.u8.qdq.onnx", int8_weights=False),
        "qcompile_s8": export(model, folder / f"{name}.s8.qdq.onnx", int8_weights=True),
    }
    static = ort_baselines.ort_quantize_static(clone_model(float_model), calibration, folder / "ort_scratch")
    sessions = {
        "ort_fp32": runtime.make_session(float_model, threads=threads),
        "ort_int8_static": runtime.make_session(static, threads=threads),
        **{label: runtime.make_session(str(path), threads=threads) for label, path in paths.items()},
    }
    feeds = entry.latency_feeds()
    before, after = (runtime.run(sessions[label], feeds) for label in ("qcompile_u8", "qcompile_s8"))
    form_diff = max(float(np.max(np.abs(before[k] - after[k]))) for k in before)
    scores = entry.evaluate({label: _runner(s) for label, s in sessions.items()}, samples, seed, progress=False)
    runners = {label: (lambda s=s: runtime.run(s, feeds)) for label, s in sessions.items()}
    latency = measure_latency(runners, rounds=rounds)
    limit = entry.sample_limits()[1]
    return {
        "model": f"zoo:{name}",
        "metric": entry.metric_name,
        "eval_samples": min(samples, limit) if limit else samples,
        "calib_samples": calibration.samples,
        "scores": {label: scores[label][entry.metric_name] for label in sessions},
        "latency_ms": latency,
        "vs_fp32": {label: latency[label] / latency["ort_fp32"] for label in sessions},
        "max_abs_diff_u8_vs_s8_form": form_diff,
        "artifact_bytes": {label: path.stat().st_size for label, path in paths.items()},
    }


def write_markdown(results: list[dict], meta: dict, path: Path) -> None:
    lines = [
        "# QDQ artifact speed in ONNX Runtime: qcompile vs ORT's own static QDQ",
        "",
        f"CPU: {meta['cpu']} ({meta['cores']} logical CPUs); flags: {', '.join(meta['flags']) or 'none'}; "
        f"u8×s8 kernels exact here (VNNI/AMX): {meta['int8_weights_exact']}.",
        f"ONNX Runtime {meta['onnxruntime']}, {meta['threads']} intra-op threads, batch 1, one process; latency: "
        "`measure_latency` (median over alternating blocks after warm-up, pauses between blocks; "
        f"{meta['rounds']} rounds). Accuracy: the same run's evaluation, all sessions on the same samples.",
        f"Command: `{meta['command']}`",
        "",
        "Latency ratio = latency / ORT FP32 latency (lower is faster).",
        "",
    ]
    for result in results:
        lines += [
            f"## {result['model']} ({result['metric']}, {result['eval_samples']} evaluation samples, "
            f"{result['calib_samples']} calibration samples)",
            "",
            f"| model | {result['metric']} | latency ms | latency ratio vs FP32 |",
            "|---|---:|---:|---:|",
        ]
        for label, title in LABELS.items():
            lines.append(
                f"| {title} | {result['scores'][label]:.2f} | {result['latency_ms'][label]:.2f} | "
                f"{result['vs_fp32'][label]:.2f} |"
            )
        lines += [
            "",
            f"max |output(uint8 form) − output(int8 form)| on the latency input: "
            f"{result['max_abs_diff_u8_vs_s8_form']:.3g} (the two forms hold the same quantizers; see "
            "docs/qdq-export.md).",
            "",
        ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="dinov2-s,minilm-l6")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--eval-samples", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "qdq_speed")
    args = parser.parse_args(argv)
    flags = cpu_flags()
    meta = {
        "cpu": cpu_name(),
        "cores": len(__import__("os").sched_getaffinity(0)),
        "flags": [flag for flag in CPU_FLAGS if flag in flags],
        "exact_int8_flags": sorted(EXACT_INT8_FLAGS & flags),
        "int8_weights_exact": int8_weights_exact(flags),
        "onnxruntime": ort.__version__,
        "threads": args.threads,
        "rounds": args.rounds,
        "command": (
            "QCOMPILE_CACHE=$HOME/.cache/qcompile .venv/bin/python benchmarks/qdq_speed.py "
            + " ".join(argv if argv is not None else sys.argv[1:])
        ).rstrip(),
    }
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            start = time.perf_counter()
            results.append(
                measure(name, args.calib_samples, args.eval_samples, args.rounds, args.threads, args.seed, Path(folder))
            )
            print(f"{name}: {time.perf_counter() - start:.0f} s", json.dumps(results[-1]["latency_ms"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    write_markdown(results, meta, args.out.with_suffix(".md"))


if __name__ == "__main__":
    main()
