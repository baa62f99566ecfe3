"""Where a TVM integer library spends its time: each VM call (kernel or builtin) timed through the VM's
instrument hook on one run after a warm-up, summed per function (numbered copies merged), largest
first. Instrumentation adds a little per call; use it for the split, tvm_latency.py for latency.

    python benchmarks/tvm_profile.py OUTDIR_OR_MODEL.int.onnx [--shape NAME=1x3x224x224 ...]

OUTDIR is a `qcompile ... --target llvm -o OUTDIR` folder; a model.int.onnx is compiled first (shapes
from --shape, else the declared ones with batch 1). Inputs are seeded random values of the right dtype.
"""

from __future__ import annotations

import argparse
import collections
import re
import tempfile
import time
from pathlib import Path

import numpy as np

import qcompile.backends.tvm as qtvm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--shape", action="append", default=[])
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    import onnx

    directory = args.path
    if directory.suffix == ".onnx":
        shapes = {name: tuple(int(d) for d in dims.split("x")) for name, dims in (s.split("=") for s in args.shape)}
        compiled = qtvm.compile_int_model(onnx.load(str(directory)), "llvm", shapes or None)
        directory = Path(tempfile.mkdtemp(prefix="tvm-profile-"))
        qtvm.save(compiled, directory)
    model = qtvm.load(directory)
    rng = np.random.default_rng(0)
    feeds = {
        spec["name"]: (
            rng.standard_normal(spec["shape"])
            if spec["dtype"].startswith("float")
            else rng.integers(1, 1000, spec["shape"])
        ).astype(spec["dtype"])
        for spec in model.metadata["inputs"]
    }
    tensors = model.prepare(feeds)
    for _ in range(3):
        model.run_prepared(tensors)
    totals: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, int] = collections.defaultdict(int)
    started: list[float] = []

    def instrument(func, name, before, ret, *args):
        if before:
            started.append(time.perf_counter())
        else:
            key = re.sub(r"\d+", "", str(name))
            totals[key] += time.perf_counter() - started.pop()
            counts[key] += 1
        return 0

    model._vm.set_instrument(instrument)
    start = time.perf_counter()
    model.run_prepared(tensors)
    wall = time.perf_counter() - start
    total = sum(totals.values())
    print(f"one run: {wall * 1e3:.2f} ms wall, {total * 1e3:.2f} ms in calls; TVM pool {qtvm.pool_threads()} threads\n")
    print("| function | calls | ms | share |\n|---|---|---|---|")
    for key, seconds in sorted(totals.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"| {key[:80]} | {counts[key]} | {seconds * 1e3:.2f} | {100 * seconds / total:.0f}% |")


if __name__ == "__main__":
    main()
