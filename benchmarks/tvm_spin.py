"""How long TVM's idle workers should spin: a compiled library's latency and the CPU its pool burns
after a run, per `TVM_THREAD_POOL_SPIN_COUNT`, each setting in a fresh process (the pool reads the
variable once, when it is created).

An idle worker calls sched_yield up to that many times before it sleeps. 0 sleeps at once, so every
parallel kernel pays a wake-up; TVM's default spins for tens of milliseconds, which is fast for TVM
and steals the cores from whatever runs next in the process (an ONNX Runtime baseline timed after it).
`backends.tvm.BRIEF_SPIN` should be on the plateau of the first column and near zero in the second.

    python benchmarks/tvm_spin.py OUTDIR [--counts 0,500,2000,20000,default] [--runs 30]

OUTDIR is a `qcompile ... --target llvm -o OUTDIR` folder. Medians of `--runs` runs after 5 warm-ups,
2 threads; "CPU after" is the process CPU time during a 50 ms sleep right after the last run.
Reports; asserts nothing. Writes benchmarks/results/tvm_spin.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

_CHILD = r"""
import statistics, sys, time
import numpy as np
import qcompile.backends.tvm as qtvm
model = qtvm.load(sys.argv[1])
runs = int(sys.argv[2])
rng = np.random.default_rng(0)
feeds = {s["name"]: rng.standard_normal(s["shape"]).astype(s["dtype"]) for s in model.metadata["inputs"]}
tensors = model.prepare(feeds)
for _ in range(5):
    model.run_prepared(tensors)
times = []
for _ in range(runs):
    start = time.perf_counter()
    model.run_prepared(tensors)
    times.append(time.perf_counter() - start)
cpu = time.process_time()
time.sleep(0.05)
print(statistics.median(times) * 1e3, (time.process_time() - cpu) * 1e3)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--counts", default="0,500,2000,20000,default")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    rows = []
    for count in args.counts.split(","):
        env = {k: v for k, v in os.environ.items() if k != "TVM_THREAD_POOL_SPIN_COUNT"}
        env["TVM_NUM_THREADS"] = "2"
        if count != "default":
            env["TVM_THREAD_POOL_SPIN_COUNT"] = count
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(args.outdir), str(args.runs)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        latency, burned = (float(v) for v in out.stdout.split()[-2:])
        rows.append(f"| {count} | {latency:.2f} | {burned:.1f} |")
        print(rows[-1], flush=True)
    lines = [
        "# TVM pool spinning",
        "",
        f"Produced by `python benchmarks/tvm_spin.py {args.outdir.name} --counts {args.counts} "
        f"--runs {args.runs}` on a",
        "`qcompile zoo:dinov2-s --passes repq,intonly --target llvm` library; "
        "2 threads, batch 1, one fresh process per row.",
        "",
        "| TVM_THREAD_POOL_SPIN_COUNT | latency ms (median) | CPU ms burned in the 50 ms after the last run |",
        "|---|---|---|",
        *rows,
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tvm_spin.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
