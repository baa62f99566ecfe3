"""The TVM int8 GEMM kernel alone, in GOP/s, on DINOv2-S's linear-layer shapes (M = 257 tokens):
qcompile's exact int16-pair vpmaddwd kernel (fused requantize epilogue off) against ONNX Runtime's
MatMulInteger (u8×s8, weights in [-127, 127]; its AVX2 kernel saturates int16 pair sums, so it is
timed, not trusted) and ONNX Runtime's FP32 MatMul, side by side in one process, `--threads` threads,
medians of `--repeat` timings of `--number` runs after a warm-up. GOP = 2·M·K·N.

    python benchmarks/tvm_gemm.py [--threads 2] [--rows 6] [--col-blocks 2] [--json out.json]

The CPU's peak for this instruction mix (vpmaddwd + vpaddd per 16 multiply-adds) is measured, not
assumed: one register tile (M = rows, N = 8·col_blocks, operands in L1) on one core at K = 256 and K = 1024;
the time difference cancels the per-call cost and gives the inner loop's rate, times the thread count.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

SHAPES = [(257, 384, 1152), (257, 384, 384), (257, 384, 1536), (257, 1536, 384)]  # qkv, proj, fc1, fc2


def _ort_session(op: str, k: int, n: int, threads: int, weight: np.ndarray):
    import onnx
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
    run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            run()
        times.append((time.perf_counter() - start) / number)
    return statistics.median(times)


def _tvm_gemm(m: int, k: int, n: int, threads: int, rows: int, col_blocks: int):
    import tvm

    from qcompile.backends.tvm.kernels.int_gemm import int_gemm_func, schedule_int_gemm
    from qcompile.backends.tvm.target import host_target

    lib = tvm.tirx.build(schedule_int_gemm(int_gemm_func(m, k, n, rows=rows, a_dtype="uint8"), rows=rows, col_blocks=col_blocks), target=host_target(threads))
    return lib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--col-blocks", type=int, default=2)
    parser.add_argument("--number", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    import tvm

    import qcompile.backends.tvm as qtvm
    from qcompile.backends.tvm.kernels.int_gemm import pack_weight

    qtvm.configure_pool(args.threads)  # before TVM's pool exists: its size is fixed at first use
    rng = np.random.default_rng(0)
    results = []
    for m, k, n in SHAPES:
        a = rng.integers(0, 256, (m, k)).astype(np.uint8)
        w = rng.integers(-127, 128, (k, n)).astype(np.int8)
        lib = _tvm_gemm(m, k, n, args.threads, args.rows, args.col_blocks)
        wp = pack_weight(w)
        bias = np.zeros(wp.shape[0] * 8, np.int32)
        out = tvm.runtime.tensor(np.zeros((m, n), np.int32))
        tvm_args = [tvm.runtime.tensor(a), tvm.runtime.tensor(wp), tvm.runtime.tensor(bias), out]
        lib["main"](*tvm_args)
        exact = bool(np.array_equal(out.numpy(), a.astype(np.int64) @ w.astype(np.int64)))
        integer = _ort_session("MatMulInteger", k, n, args.threads, w)
        fp32 = _ort_session("MatMul", k, n, args.threads, w)
        af = a.astype(np.float32)
        ort_int = integer.run(None, {"a": a})[0]
        seconds = {
            "tvm_int16_pairs": _median_seconds(lambda: lib["main"](*tvm_args), args.number, args.repeat),
            "ort_matmulinteger": _median_seconds(lambda: integer.run(None, {"a": a}), args.number, args.repeat),
            "ort_fp32_matmul": _median_seconds(lambda: fp32.run(None, {"a": af}), args.number, args.repeat),
        }
        gop = 2 * m * k * n / 1e9
        row = {"m": m, "k": k, "n": n, "tvm_exact": exact, "ort_matmulinteger_exact": bool(np.array_equal(ort_int, a.astype(np.int64) @ w.astype(np.int64)))}
        row.update({f"{name}_gops": gop / s for name, s in seconds.items()})
        results.append(row)

    # the inner tile's own rate: one register tile (M = rows, N = 8·col_blocks: a single parallel task, so
    # one core), timed at two depths K; the difference cancels the per-call cost, leaving the rate of the
    # vpmaddwd loop itself
    m, n = args.rows, 8 * args.col_blocks
    seconds_at = {}
    for k in (256, 1024):
        lib = _tvm_gemm(m, k, n, 1, args.rows, args.col_blocks)
        tile_args = [
            tvm.runtime.tensor(rng.integers(0, 256, (m, k)).astype(np.uint8)),
            tvm.runtime.tensor(pack_weight(rng.integers(-127, 128, (k, n)))),
            tvm.runtime.tensor(np.zeros(n, np.int32)),
            tvm.runtime.tensor(np.zeros((m, n), np.int32)),
        ]
        seconds_at[k] = lib.time_evaluator("main", tvm.cpu(), number=2000, repeat=args.repeat)(*tile_args).median
    tile = 2 * m * n * (1024 - 256) / 1e9 / (seconds_at[1024] - seconds_at[256])
    peak = tile * args.threads

    print(f"threads {args.threads} (TVM pool: {qtvm.pool_threads()}); tile {args.rows}x{8 * args.col_blocks}; inner-tile rate {tile:.1f} GOP/s per core → peak {peak:.1f} GOP/s\n")
    print("| M×K×N | TVM int16-pair GOP/s (exact) | % of measured peak | ORT MatMulInteger GOP/s (exact) | ORT FP32 MatMul GFLOP/s |")
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['m']}×{r['k']}×{r['n']} | {r['tvm_int16_pairs_gops']:.1f} ({r['tvm_exact']}) | {100 * r['tvm_int16_pairs_gops'] / peak:.0f}% "
            f"| {r['ort_matmulinteger_gops']:.1f} ({r['ort_matmulinteger_exact']}) | {r['ort_fp32_matmul_gops']:.1f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "rows": args.rows, "col_blocks": args.col_blocks, "tile_gops_per_core": tile, "peak_gops": peak, "shapes": results}, f, indent=2)


if __name__ == "__main__":
    main()
