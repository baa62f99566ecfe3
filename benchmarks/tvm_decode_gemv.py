"""The weight-reading half of one decoded token of SmolLM2-135M, in isolation: every linear layer of the 30
decoder blocks (q/k/v fused 576→960, o 576→576, gate/up fused 576→3072, down 1536→576) and the LM head
(576→49152) as one-row matmuls, each layer with its own weights so that a "token" streams all of them from
memory, as decode does. Side by side in one process, `--threads` threads, medians of `--repeat` timings
after a warm-up:

* TVM: `kernels.int4_matmul` (4-bit codes two per byte, per-channel or per-group scales, int8 activation
  codes) in every flavour this CPU runs, all layers called from one Relax VM function;
* ONNX Runtime `MatMulNBits` (4-bit, block 32 and 128, accuracy_level 4: int8 compute, and 0: float),
  all layers in one graph;
* ONNX Runtime FP32 `MatMul` on the same shapes (4 bytes a weight).

It also measures this machine's memory bandwidth (`--threads` threads copying 512 MB with NumPy, and
reading them with a TVM vector loop) and reports each runtime's weight bytes per token divided by its time:
the effective read rate, and its share of the bandwidth. Nothing here computes attention, norms or the
activation quantizer: this is the floor of a decode step's time, not a decode step. Writes
benchmarks/results/tvm_decode_gemv.{md,json}.

    python benchmarks/tvm_decode_gemv.py [--threads 2] [--repeat 15] [--layers 30]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import threading
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
HIDDEN, FFN, VOCAB = 576, 1536, 49152
LAYER_SHAPES = [(HIDDEN, 960), (HIDDEN, HIDDEN), (HIDDEN, 2 * FFN), (FFN, HIDDEN)]  # (K, N)
HEAD = (HIDDEN, VOCAB)


def _shapes(layers: int) -> list[tuple[int, int]]:
    return [shape for _ in range(layers) for shape in LAYER_SHAPES] + [HEAD]


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _median(run, repeat: int) -> float:
    time.sleep(0.3)  # idle workers of the previous runtime go to sleep first
    for _ in range(3):
        run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _tvm_read_seconds(words: int, threads: int):
    """A TVM kernel that reads an int32 buffer once with 16-lane vector adds in `threads` parallel slices (a
    streaming read as the matmuls do, with next to no arithmetic): main(x int32 [words], out int32 [threads, 16])."""
    import tvm
    from tvm.script import tirx as T

    from qcompile.backends.tvm.target import host_target

    chunk = words // threads // 16

    @T.prim_func(s_tir=True)
    def read(x: T.Buffer((words,), "int32"), out: T.Buffer((threads, 16), "int32")):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        for t in T.parallel(threads):
            acc = T.alloc_buffer((16,), "int32", scope="global")
            acc[T.ramp(0, 1, 16)] = T.broadcast(0, 16)
            for i in range(chunk):
                acc[T.ramp(0, 1, 16)] = acc[T.ramp(0, 1, 16)] + x[T.ramp((t * chunk + i) * 16, 1, 16)]
            out[t, T.ramp(0, 1, 16)] = acc[T.ramp(0, 1, 16)]

    lib = tvm.tirx.build(read, target=host_target(threads))
    x = tvm.runtime.tensor(np.ones(words, np.int32))
    out = tvm.runtime.tensor(np.zeros((threads, 16), np.int32))
    return _median(lambda: lib["main"](x, out), 7)


def _bandwidth(threads: int, megabytes: int = 512) -> dict:
    """GB/s of NumPy copying `megabytes` (bytes read + written) and of a TVM vector read of them, in `threads`
    slices."""
    src = np.ones(megabytes * 2**20 // 8, np.float64)
    dst = np.empty_like(src)
    slices = np.array_split(np.arange(src.size), threads)
    bounds = [(int(s[0]), int(s[-1]) + 1) for s in slices]

    def parallel(work):
        pool = [threading.Thread(target=work, args=b) for b in bounds]
        for t in pool:
            t.start()
        for t in pool:
            t.join()

    copy = _median(lambda: parallel(lambda lo, hi: np.copyto(dst[lo:hi], src[lo:hi])), 7)
    read = _tvm_read_seconds(src.nbytes // 4, threads)
    small = 64 * 2**20  # about the 4-bit model's weight bytes: where a large last-level cache holds them
    read_small = _tvm_read_seconds(small // 4, threads)
    return {
        "copy_gb_s": 2 * src.nbytes / copy / 1e9,
        "read_gb_s": src.nbytes / read / 1e9,
        "read_64mb_gb_s": small / read_small / 1e9,
    }


def _tvm_run(shapes, flavour: str, group: int | None, threads: int, rng) -> tuple[float, int]:
    """Median seconds of one call of a Relax function running every matmul, and the weight bytes it reads."""
    import tvm
    from tvm import relax

    from qcompile.backends.tvm.fence import fence_float_products
    from qcompile.backends.tvm.kernels.int4_matmul import (
        FLAVOURS,
        PANEL,
        int4_matmul_func,
        pack_group_params,
        pack_weight,
        padded_columns,
    )
    from qcompile.backends.tvm.target import host_target

    lanes, panel = FLAVOURS[flavour], PANEL[flavour]
    bb = relax.BlockBuilder()
    funcs = {}
    for k, n in sorted(set(shapes)):
        func = fence_float_products(int4_matmul_func(1, k, n, group or k, flavour, panel=panel))
        funcs[(k, n)] = bb.add_func(func.with_attr("global_symbol", f"mm_{k}_{n}"), f"mm_{k}_{n}")
    params, arrays, nbytes = [], [], 0
    inputs = {k: relax.Var(f"a{k}", relax.TensorType((1, k), "int8")) for k in {k for k, _ in shapes}}
    scale_in = relax.Var("act_scale", relax.TensorType((1,), "float32"))
    for i, (k, n) in enumerate(shapes):
        groups = k // (group or k)
        q = rng.integers(0, 16, (k, n))
        packed_scale, packed_zero, _ = pack_group_params(
            q, rng.integers(0, 16, (groups, n)), rng.random((groups, n), np.float32), lanes, group or k, panel=panel
        )
        for name, array in (("wp", pack_weight(q, lanes, panel=panel)), ("scale", packed_scale), ("zero", packed_zero)):
            params.append(relax.Var(f"{name}{i}", relax.TensorType(array.shape, str(array.dtype))))
            arrays.append(array)
            nbytes += array.nbytes
    with bb.function("main", [*inputs.values(), scale_in, *params]):
        with bb.dataflow():
            outs = []
            for i, (k, n) in enumerate(shapes):
                width = padded_columns(n, lanes, panel)
                call = relax.call_tir(
                    funcs[(k, n)],
                    [inputs[k], *params[3 * i : 3 * i + 3], scale_in],
                    relax.TensorType((1, width), "float32"),
                )
                outs.append(bb.emit(call))
            result = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(result)
    executable = relax.build(bb.get(), target=host_target(threads))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    args = [tvm.runtime.tensor(rng.integers(-127, 128, (1, k)).astype(np.int8)) for k in inputs]
    args += [tvm.runtime.tensor(np.array([0.01], np.float32))]
    args += [tvm.runtime.tensor(a) for a in arrays]
    vm.set_input("main", *args)
    return _median(lambda: vm.invoke_stateful("main"), REPEAT), nbytes


def _ort_session(shapes, op: str, threads: int, rng, block: int = 32, accuracy_level: int = 4):
    """An ONNX Runtime session running every matmul (MatMulNBits with random 4-bit blocks, or FP32 MatMul)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    widths = sorted({k for k, _ in shapes})
    inputs = [helper.make_tensor_value_info(f"a{k}", TensorProto.FLOAT, [1, k]) for k in widths]
    nodes, inits, outputs, nbytes = [], [], [], 0
    for i, (k, n) in enumerate(shapes):
        if op == "MatMul":
            weight = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), f"w{i}")
            inits.append(weight)
            nodes.append(helper.make_node("MatMul", [f"a{k}", f"w{i}"], [f"y{i}"]))
            nbytes += k * n * 4
        else:
            blocks = -(-k // block)
            packed = rng.integers(0, 256, (n, blocks, block // 2), dtype=np.uint8)
            scales = (rng.random(n * blocks) * 0.01).astype(np.float32)
            inits += [numpy_helper.from_array(packed, f"w{i}"), numpy_helper.from_array(scales, f"s{i}")]
            nodes.append(
                helper.make_node(
                    "MatMulNBits",
                    [f"a{k}", f"w{i}", f"s{i}"],
                    [f"y{i}"],
                    domain="com.microsoft",
                    K=k,
                    N=n,
                    bits=4,
                    block_size=block,
                    accuracy_level=accuracy_level,
                )
            )
            nbytes += packed.nbytes + scales.nbytes
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, n]))
    graph = helper.make_graph(nodes, "decode_weights", inputs, outputs, inits)
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {f"a{k}": rng.standard_normal((1, k)).astype(np.float32) for k in widths}
    return _median(lambda: session.run(None, feeds), REPEAT), nbytes


REPEAT = 15


def main() -> None:
    global REPEAT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS / "tvm_decode_gemv")
    args = parser.parse_args()
    REPEAT = args.repeat

    from qcompile.backends.tvm import configure_pool

    configure_pool(args.threads)  # before TVM's pool starts
    from qcompile.backends.tvm.kernels.int4_matmul import flavours_for
    from qcompile.backends.tvm.target import cpu_features, host_target

    rng = np.random.default_rng(0)
    shapes = _shapes(args.layers)
    rows = []
    for flavour in flavours_for(cpu_features(host_target(args.threads))):
        for group in (None, 128, 64):
            if group == 128 and HIDDEN % 128:
                continue  # 576 columns: no group of 128 divides them
            seconds, nbytes = _tvm_run(shapes, flavour, group, args.threads, rng)
            label = "per channel" if group is None else f"group {group}"
            rows.append({"runtime": f"TVM int4_matmul ({flavour})", "weights": label, "s": seconds, "bytes": nbytes})
    for block, level in ((32, 4), (128, 4), (32, 0)):
        seconds, nbytes = _ort_session(shapes, "MatMulNBits", args.threads, rng, block, level)
        weights = f"4-bit, block {block}, accuracy_level {level}"
        rows.append({"runtime": "ONNX Runtime MatMulNBits", "weights": weights, "s": seconds, "bytes": nbytes})
    seconds, nbytes = _ort_session(shapes, "MatMul", args.threads, rng)
    rows.append({"runtime": "ONNX Runtime MatMul", "weights": "float32", "s": seconds, "bytes": nbytes})
    bandwidth = _bandwidth(args.threads)
    report = {"cpu": _cpu_name(), "threads": args.threads, "layers": args.layers, "bandwidth": bandwidth, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(_markdown(report))
    print(_markdown(report))


def _markdown(report: dict) -> str:
    bw = report["bandwidth"]
    fastest_ort = min(r["s"] for r in report["rows"] if "MatMulNBits" in r["runtime"])
    lines = [
        "# One decoded token's weight reads, SmolLM2-135M shapes",
        "",
        f"CPU: {report['cpu']}; {report['threads']} threads; {report['layers']} decoder blocks + LM head, one row.",
        f"Memory bandwidth (NumPy, {report['threads']} threads): copy {bw['copy_gb_s']:.1f} GB/s (read + write), "
        f"TVM vector read {bw['read_gb_s']:.1f} GB/s (512 MB), {bw['read_64mb_gb_s']:.1f} GB/s (64 MB, the 4-bit "
        f"weights' size: cache-resident where the last-level cache is larger).",
        "",
        "Command: `python benchmarks/tvm_decode_gemv.py`",
        "",
        "| runtime | weights | ms per token | weight MB | GB/s read | share of the 512 MB / 64 MB read rates "
        "| vs fastest MatMulNBits |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        rate = row["bytes"] / row["s"] / 1e9
        lines.append(
            f"| {row['runtime']} | {row['weights']} | {row['s'] * 1e3:.2f} | {row['bytes'] / 1e6:.1f} | {rate:.1f} | "
            f"{rate / bw['read_gb_s']:.0%} / {rate / bw['read_64mb_gb_s']:.0%} | {fastest_ort / row['s']:.2f}× |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
