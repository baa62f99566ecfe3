"""Latency of the TVM integer-only library against its peers, per zoo model, in one process:

    TVM integer-only (qcompile `--passes repq,intonly --target llvm`)
    ONNX Runtime FP32 · ONNX Runtime INT8 quantize_static (QDQ, reduce_range) · quantize_dynamic
    PyTorch FP32 (models with a PyTorch module: minilm-l6; DINOv2 ships as ONNX only)
    TVM FP32: the float ONNX model through the same importer, pipeline and schedule rules (float
    matmuls on `schedules.float_matmul.FloatMatmul`'s register tiles, FMA contraction allowed)

Batch 1 on the model's latency sample (`latency_feeds`), `--threads` threads everywhere (TVM's pool
sized and unpinned, see backends/tvm/__init__.py; its idle workers spin only `BRIEF_SPIN` yields,
asleep within a millisecond, so they do not steal cores from the runtime timed next), medians of
`--rounds` runs taken in alternating blocks after warm-up (`qcompile.report.latency.measure_latency`,
as the CLI's report). Before timing, the TVM
library's outputs are checked bit for bit against ONNX Runtime's on model.int.onnx, on the latency
sample and `--check-samples` evaluation inputs of the same shape; the run stops if they differ. Also
reports the build time of each TVM library. Reports; asserts nothing. Writes
benchmarks/results/tvm_latency.{md,json} (each model's entry replaced).

    python benchmarks/tvm_latency.py [--models dinov2-s,minilm-l6] [--threads 2] [--rounds 30] [--pause 0.2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import qcompile.backends.tvm  # noqa: F401  (unpins and sizes TVM's thread pool before anything creates it)
from qcompile.backends.tvm import BRIEF_SPIN

RESULTS = Path(__file__).resolve().parent / "results"
PASSES = "repq,intonly"


def _torch_runner(name: str, feeds: dict, threads: int):
    if name != "minilm-l6":
        return None
    import torch

    from qcompile.zoo.minilm_module import load_minilm

    torch.set_num_threads(threads)
    module, _ = load_minilm()
    module.eval()
    ids, mask = torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])

    def run():
        with torch.inference_mode():
            return module(ids, mask)

    return run


def _check_feeds(entry, name: str, feeds: dict, samples: int) -> list[dict]:
    """The latency sample plus evaluation inputs of the same shape (DINOv2 images; MiniLM: only the
    latency sentence has its exact token count, so sentences are cut or padded to it)."""
    checks = [feeds]
    if name == "dinov2-s":
        from qcompile.zoo.dinov2 import INPUT_NAME, load_split, vit_preprocess

        images, _ = load_split("test")
        checks += [{INPUT_NAME: vit_preprocess(images[i : i + 1])} for i in range(1, samples + 1)]
    elif name == "minilm-l6":
        length = feeds["input_ids"].shape[1]
        sentences, _, eval_half, _ = entry._split()
        for index in eval_half[1 : samples + 1]:
            tokens = entry._tokenize([sentences[index]])
            ids = np.zeros((1, length), np.int64)
            mask = np.zeros((1, length), np.int64)
            used = min(length, tokens["input_ids"].shape[1])
            ids[0, :used], mask[0, :used] = tokens["input_ids"][0, :used], tokens["attention_mask"][0, :used]
            checks.append({"input_ids": ids, "attention_mask": mask})
    return checks


def _tvm_fp32(float_bytes: bytes, feeds: dict, threads: int):
    """The float model through the same importer, pipeline and rules (FMA on: nothing to match bit for bit)."""
    import onnx
    import tvm
    from tvm import relax

    from qcompile.backends.tvm.build import compile_relax
    from qcompile.backends.tvm.lowering.importer import to_relax
    from qcompile.backends.tvm.prepare import static_model
    from qcompile.backends.tvm.target import host_target

    static = static_model(onnx.load_from_string(float_bytes), {k: v.shape for k, v in feeds.items()})
    start = time.perf_counter()
    executable = compile_relax(to_relax(static), host_target(threads), exact_float=False)
    seconds = time.perf_counter() - start
    vm = relax.VirtualMachine(executable, tvm.cpu())
    tensors = [tvm.runtime.tensor(feeds[v.name]) for v in static.graph.inputs]
    return (lambda: vm["main"](*tensors)), seconds


def measure(
    name: str,
    threads: int,
    rounds: int,
    calib_samples: int,
    check_samples: int,
    tvm_fp32: bool,
    log,
    pause: float = 0.2,
) -> dict:
    import onnx

    from qcompile import runtime, zoo
    from qcompile.backends.onnx import export, ort_baselines
    from qcompile.backends.tvm import artifact
    from qcompile.ir import model_to_bytes
    from qcompile.job import model_from_bytes
    from qcompile.pipeline.context import PipelineContext
    from qcompile.pipeline.run import run_passes
    from qcompile.report.latency import measure_latency

    entry = zoo.get(name)
    model = entry.load()
    float_bytes = model_to_bytes(model)
    calibration = entry.calibration(calib_samples, 0)
    log(f"{name}: {PASSES}")
    run_passes(model, PASSES, context=PipelineContext(calibration=calibration, progress=False, threads=threads))
    scratch = Path(tempfile.mkdtemp(prefix="tvm-latency-"))
    int_path = export(model, scratch / "model.int.onnx", fmt="int")
    feeds = entry.latency_feeds()
    log(f"{name}: compiling with TVM")
    compiled = artifact.compile_int_model(
        onnx.load(str(int_path)), "llvm", {k: v.shape for k, v in feeds.items()}, threads=threads
    )
    artifact.save(compiled, scratch)
    library = artifact.load(scratch)
    int_session = runtime.make_session(str(int_path), threads=threads)
    checks = _check_feeds(entry, name, feeds, check_samples)
    for sample in checks:
        expected, got = runtime.run(int_session, sample), library.run(sample)
        if any(not np.array_equal(got[k], expected[k]) for k in expected):
            raise SystemExit(f"{name}: the TVM library differs from ONNX Runtime on model.int.onnx; not timing it")
    log(f"{name}: bit-exact on {len(checks)} inputs; building ONNX Runtime baselines")
    sessions = {
        "ort_fp32": runtime.make_session(float_bytes, threads=threads),
        "ort_int8_static": runtime.make_session(
            ort_baselines.ort_quantize_static(model_from_bytes(float_bytes), calibration, scratch / "ort"),
            threads=threads,
        ),
        "ort_int8_dynamic": runtime.make_session(
            ort_baselines.ort_quantize_dynamic(model_from_bytes(float_bytes), scratch / "ort"), threads=threads
        ),
    }
    prepared = library.prepare(feeds)
    runners = {"tvm_int": lambda: library.run_prepared(prepared)}
    runners.update({label: (lambda s=session: runtime.run(s, feeds)) for label, session in sessions.items()})
    torch_run = _torch_runner(name, feeds, threads)
    if torch_run is not None:
        runners["pytorch_fp32"] = torch_run
    fp32_build = None
    if tvm_fp32:
        log(f"{name}: compiling the float model with TVM")
        runners["tvm_fp32"], fp32_build = _tvm_fp32(float_bytes, feeds, threads)
    log(f"{name}: timing {', '.join(runners)}")
    latency = measure_latency(runners, rounds=rounds, pause=pause)
    fastest_int8 = min(latency["ort_int8_static"], latency["ort_int8_dynamic"])
    return {
        "model": name,
        "passes": PASSES,
        "input_shapes": {k: list(v.shape) for k, v in feeds.items()},
        "threads": threads,
        "tvm_pool_threads": qcompile.backends.tvm.pool_threads(),
        "rounds": rounds,
        "pause_s": pause,
        "latency_ms": latency,
        "tvm_int_over_ort_fp32": latency["tvm_int"] / latency["ort_fp32"],
        "tvm_int_over_fastest_ort_int8": latency["tvm_int"] / fastest_int8,
        "bit_exact_inputs": len(checks),
        "tvm_int_build_seconds": compiled.seconds,
        "tvm_fp32_build_seconds": fp32_build,
        "target": compiled.metadata["target"],
        "kernels": compiled.metadata["kernels"],
        "library_mb": (scratch / artifact.LIBRARY).stat().st_size / 1e6,
        "command": "python benchmarks/tvm_latency.py " + " ".join(sys.argv[1:]),
    }


LABELS = [
    ("tvm_int", "qcompile TVM integer-only"),
    ("ort_fp32", "ONNX Runtime FP32"),
    ("ort_int8_static", "ONNX Runtime INT8 static"),
    ("ort_int8_dynamic", "ONNX Runtime INT8 dynamic"),
    ("pytorch_fp32", "PyTorch FP32"),
    ("tvm_fp32", "TVM FP32 (same pipeline; FloatMatmul register tiles)"),
]


def _label(result: dict) -> str:
    pause = result.get("pause_s", 0.2)
    return (
        result["model"]
        + (" (TVM pool spinning)" if result.get("tvm_pool_spinning") else "")
        + (f" ({pause * 1e3:.0f} ms pauses)" if pause != 0.2 else "")
    )


def _cpu(result: dict) -> str:
    return json.loads(result["target"]).get("mcpu", "?")


def render(results: dict) -> list[str]:
    lines = [
        "# TVM integer-only latency",
        "",
        "Each row's CPU is in the second table (the target's mcpu); produced by",
        "",
    ]
    lines += [f"    {command}" for command in dict.fromkeys(r["command"] for r in results.values())]
    lines += ["", "| model | input | runtime | ms (median) | vs ORT FP32 |", "|---|---|---|---|---|"]
    for r in results.values():
        base = r["latency_ms"]["ort_fp32"]
        shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in r["input_shapes"].items())
        for label, text in LABELS:
            value = r["latency_ms"].get(label)
            cell = "n/a" if value is None else f"{value:.2f}"
            ratio = "-" if value is None else f"{value / base:.2f}×"
            lines.append(f"| {_label(r)} | {shapes} | {text} | {cell} | {ratio} |")
    lines += [
        "",
        "| model | CPU | kernels | TVM int / ORT FP32 (goal ≤ 0.5) | TVM int / faster ORT INT8 (goal ≤ 0.8) "
        "| bit-exact inputs | TVM int build s | library MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results.values():
        lines.append(
            f"| {_label(r)} | {_cpu(r)} | {r.get('kernels', 'llvm')} | {r['tvm_int_over_ort_fp32']:.2f} "
            f"| {r['tvm_int_over_fastest_ort_int8']:.2f} "
            f"| {r['bit_exact_inputs']} | {r['tvm_int_build_seconds']:.1f} | {r['library_mb']:.0f} |"
        )
    first = next(iter(results.values()))
    lines += [
        "",
        f"Batch 1, {first['threads']} threads, medians of {first['rounds']} runs in alternating blocks after warm-up, "
        "each block after a 200 ms pause unless",
        f"the row says otherwise (benchmarks/results/latency_pause.md); target of the first row `{first['target']}`.",
        f"Rows without a mark: TVM's idle workers spin {BRIEF_SPIN} yields and then sleep "
        "(asleep within a millisecond of a run's end:",
        "benchmarks/tvm_spin.py), so they catch the next kernel of the same run "
        "but cannot slow the runtime timed next;",
        "'(TVM pool spinning)' rows keep TVM's default spinning (tens of ms after every kernel), "
        "which can slow the ONNX Runtime runs",
        "that follow it in the same process.",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="dinov2-s,minilm-l6")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument(
        "--pause",
        type=float,
        default=0.2,
        help="seconds of pause before each block of runs (measure_latency's default 0.2)",
    )
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--check-samples", type=int, default=8)
    parser.add_argument("--no-tvm-fp32", action="store_true", help="skip the (slow) float TVM build")
    parser.add_argument(
        "--tvm-spin",
        action="store_true",
        help="leave TVM's workers spinning between kernels "
        "(TVM's default; results saved as 'MODEL, TVM pool spinning')",
    )
    args = parser.parse_args()
    # before TVM's pool exists (fixed at first use). TVM's default spinning after each parallel region
    # steals the cores from the runtime timed next; unless --tvm-spin, idle workers spin only briefly
    qcompile.backends.tvm.configure_pool(args.threads, spin_count=None if args.tvm_spin else BRIEF_SPIN)
    path = RESULTS / "tvm_latency.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for name in args.models.split(","):
        key = (f"{name}, TVM pool spinning" if args.tvm_spin else name) + (
            f", pause {args.pause}" if args.pause != 0.2 else ""
        )
        log = lambda m: print(m, file=sys.stderr)  # noqa: E731
        results[key] = measure(
            name,
            args.threads,
            args.rounds,
            args.calib_samples,
            args.check_samples,
            not args.no_tvm_fp32,
            log,
            args.pause,
        )
        results[key]["tvm_pool_spinning"] = args.tvm_spin
        path.write_text(json.dumps(results, indent=2) + "\n")
    text = "\n".join(render(results)) + "\n"
    (RESULTS / "tvm_latency.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
