"""The TVM int8 GEMM kernels alone, in GOP/s, on DINOv2-S's linear-layer shapes (M = 257 tokens) and
MiniLM-L6's (M = 36): each exact kernel this CPU runs — the int16-pair vpmaddwd kernel (AVX2; on VNNI
CPUs LLVM folds it into vpdpwssd) and the vpdpbusd kernel (AVX512-VNNI / AVX-VNNI), fused requantize
epilogue off — against ONNX Runtime's MatMulInteger (u8×s8, weights in [-127, 127]; its AVX2 kernel
saturates int16 pair sums, so it is timed and checked, not trusted) and ONNX Runtime's FP32 MatMul,
side by side in one process, `--threads` threads, medians of `--repeat` timings of `--number` runs
after a warm-up. GOP = 2·M·K·N. Writes benchmarks/results/tvm_gemm.{md,json}.

    python benchmarks/tvm_gemm.py [--threads 2] [--number 20] [--repeat 7]

Each kernel's peak is measured, not assumed: one register tile of that kernel (operands in L1, one
parallel task, so one core) at K = 256 and K = 1024; the time difference cancels the per-call cost and
gives the inner loop's rate, times the thread count.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

SHAPES = [
    (257, 384, 1152),
    (257, 384, 384),
    (257, 384, 1536),
    (257, 1536, 384),
    (36, 384, 384),
    (36, 384, 1536),
    (36, 1536, 384),
]  # DINOv2-S; MiniLM-L6
RESULTS = Path(__file__).resolve().parent / "results"


def _ort_session(op: str, k: int, n: int, threads: int, weight: np.ndarray):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    if op == "MatMulInteger":
        inputs = [helper.make_tensor_value_info("a", TensorProto.UINT8, ["m", k])]
        init = [numpy_helper.from_array(weight.astype(np.int8), "w")]
        out = helper.make_tensor_value_info("y", TensorProto.INT32, ["m", n])
    else:
        inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["m", k])]
        init = [numpy_helper.from_array(weight.astype(np.float32), "w")]
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])
    graph = helper.make_graph([helper.make_node(op, ["a", "w"], ["y"])], "g", inputs, [out], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _median_seconds(run, number: int, repeat: int) -> float:
    time.sleep(0.5)  # the previous runtime's idle workers (ORT's and TVM's both spin) go to sleep first
    for _ in range(number):  # warm-up: caches, the pool's workers awake, the clock up
        run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            run()
        times.append((time.perf_counter() - start) / number)
    return statistics.median(times)


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One exact TVM GEMM: how to build it for (m, k, n) and pack its weight, and its register tile."""

    label: str
    build: Callable  # (m, k, n, threads) -> runtime module
    pack: Callable  # (weight [K, N] int8) -> packed weight
    bias_lanes: int
    tile: tuple[int, int]  # (rows, columns) of one register tile


def _kernels(features) -> list[Kernel]:
    import tvm

    from qcompile.backends.tvm.kernels import int_gemm, int_gemm_vnni
    from qcompile.backends.tvm.target import host_target

    def pairs(m, k, n, threads):
        return tvm.tirx.build(
            int_gemm.schedule_int_gemm(int_gemm.int_gemm_func(m, k, n, a_dtype="uint8")), target=host_target(threads)
        )

    kernels = [Kernel("int16 pairs (vpmaddwd)", pairs, int_gemm.pack_weight, int_gemm.LANES, (6, 16))]
    lanes = int_gemm_vnni.vnni_lanes(features)
    if lanes:
        rows, blocks = int_gemm_vnni.TILES[lanes]

        def vnni(m, k, n, threads):
            return tvm.tirx.build(
                int_gemm_vnni.schedule_vnni_gemm(int_gemm_vnni.vnni_gemm_func(m, k, n, lanes), lanes),
                target=host_target(threads),
            )

        label = f"vpdpbusd ({'zmm' if lanes == 16 else 'ymm'})"
        kernels.append(
            Kernel(label, vnni, lambda w: int_gemm_vnni.pack_weight(w, lanes), lanes, (rows, blocks * lanes))
        )
    return kernels


def _tvm_args(kernel: Kernel, a: np.ndarray, w: np.ndarray):
    import tvm

    wp = kernel.pack(w)
    bias = np.zeros(wp.shape[0] * kernel.bias_lanes, np.int32)
    out = tvm.runtime.tensor(np.zeros((a.shape[0], w.shape[1]), np.int32))
    return [tvm.runtime.tensor(a), tvm.runtime.tensor(wp), tvm.runtime.tensor(bias), out]


def _tile_rate(kernel: Kernel, repeat: int, rng) -> float:
    """GOP/s of one register tile's inner loop on one core (K = 1024 minus K = 256 cancels the call)."""
    import tvm

    m, n = kernel.tile
    seconds = {}
    for k in (256, 1024):
        lib = kernel.build(m, k, n, 1)
        args = _tvm_args(
            kernel, rng.integers(0, 256, (m, k)).astype(np.uint8), rng.integers(-127, 128, (k, n)).astype(np.int8)
        )
        seconds[k] = lib.time_evaluator("main", tvm.cpu(), number=2000, repeat=repeat)(*args).median
    return 2 * m * n * (1024 - 256) / 1e9 / (seconds[1024] - seconds[256])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--number", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    import qcompile.backends.tvm as qtvm
    from qcompile.backends.tvm.target import cpu_features, host_target

    qtvm.configure_pool(args.threads)  # before TVM's pool exists: its size is fixed at first use
    target = host_target(args.threads)
    kernels = _kernels(cpu_features(target))
    rng = np.random.default_rng(0)
    results = []
    for m, k, n in SHAPES:
        a = rng.integers(0, 256, (m, k)).astype(np.uint8)
        w = rng.integers(-127, 128, (k, n)).astype(np.int8)
        reference = a.astype(np.int64) @ w.astype(np.int64)
        row = {"m": m, "k": k, "n": n, "kernels": {}}
        for kernel in kernels:
            lib, tvm_args = kernel.build(m, k, n, args.threads), _tvm_args(kernel, a, w)
            lib["main"](*tvm_args)
            exact = bool(np.array_equal(tvm_args[-1].numpy(), reference))
            main = lib["main"]
            seconds = _median_seconds(lambda: main(*tvm_args), args.number, args.repeat)
            row["kernels"][kernel.label] = {"gops": 2 * m * k * n / 1e9 / seconds, "exact": exact}
        integer = _ort_session("MatMulInteger", k, n, args.threads, w)
        fp32 = _ort_session("MatMul", k, n, args.threads, w)
        af = a.astype(np.float32)
        row["ort_matmulinteger_exact"] = bool(np.array_equal(integer.run(None, {"a": a})[0], reference))
        row["ort_matmulinteger_gops"] = (
            2 * m * k * n / 1e9 / _median_seconds(lambda: integer.run(None, {"a": a}), args.number, args.repeat)
        )
        row["ort_fp32_matmul_gops"] = (
            2 * m * k * n / 1e9 / _median_seconds(lambda: fp32.run(None, {"a": af}), args.number, args.repeat)
        )
        results.append(row)
        print(row, flush=True)
    peaks = {kernel.label: _tile_rate(kernel, args.repeat, rng) * args.threads for kernel in kernels}

    heads = " | ".join(f"TVM {label} GOP/s (exact, % of peak)" for label in peaks)
    lines = [
        "# TVM int8 GEMM vs ONNX Runtime",
        "",
        "Produced by",
        "",
        "    python benchmarks/tvm_gemm.py",
        "",
        f"CPU {target.attrs['mcpu']}, threads {args.threads} (TVM pool: {qtvm.pool_threads()}). "
        "Measured peaks (one register tile's inner loop, one core, × threads): "
        + "; ".join(
            f"{label} {kernel.tile[0]}×{kernel.tile[1]} tile {peak:.0f} GOP/s"
            for (label, peak), kernel in zip(peaks.items(), kernels)
        ),
        "",
        f"| M×K×N | {heads} | ORT MatMulInteger GOP/s (exact) | ORT FP32 MatMul GFLOP/s |",
        "|---|" + "---|" * (len(peaks) + 2),
    ]
    for r in results:
        cells = " | ".join(
            f"{r['kernels'][label]['gops']:.0f} "
            f"({r['kernels'][label]['exact']}, {100 * r['kernels'][label]['gops'] / peak:.0f}%)"
            for label, peak in peaks.items()
        )
        lines.append(
            f"| {r['m']}×{r['k']}×{r['n']} | {cells} "
            f"| {r['ort_matmulinteger_gops']:.0f} ({r['ort_matmulinteger_exact']}) "
            f"| {r['ort_fp32_matmul_gops']:.0f} |"
        )
    lines += [
        "",
        "GOP = 2·M·K·N; medians of timings of repeated calls, each after a 0.5 s pause "
        "(so the previous runtime's spinning workers sleep) and a warm-up, "
        'one process; "exact": equal to the int64 NumPy product on full-range uint8 × [-127, 127] operands. '
        "% of peak: against the kernel's own "
        "inner loop (one register tile, operands in L1, one core, K = 256 vs 1024 timed to cancel the call cost) "
        "times the threads.",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tvm_gemm.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "tvm_gemm.json").write_text(
        json.dumps(
            {"cpu": str(target.attrs["mcpu"]), "threads": args.threads, "peak_gops": peaks, "shapes": results}, indent=2
        )
        + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
