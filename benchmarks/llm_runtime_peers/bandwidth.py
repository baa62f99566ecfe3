"""Memory-bandwidth reference for the runtime table: numpy copy and read-only reductions, 1 and 2 threads.

  copy  np.copyto(dst, src) on --mib MiB float32 arrays (already touched); GB/s counts bytes read + written
        (2 x size, the STREAM convention; a write-allocate cache also reads dst, which this does not count)
  read  reductions that only read a --mib MiB array: np.max over uint8, np.sum over the same bytes viewed as int64,
        np.sum over float32; read_gb_s is the fastest of them (the others show whether one is compute-bound)

With 2 threads each thread works on one half of the arrays (numpy releases the GIL inside these loops).
Medians of --repeats timed runs after one warm-up. Decode reads every weight once per token, so a runtime's
bytes read per decoded token divided by read_gb_s bounds its decode rate from above.

Run (any peer venv with numpy, e.g. /work/peers/venv-ort), from /work/main:
  /work/peers/venv-ort/bin/python benchmarks/llm_runtime_peers/bandwidth.py   # -> out/runtime_bandwidth_numpy.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rt_common  # noqa: E402


def timed(work, threads: int, pool: ThreadPoolExecutor, repeats: int) -> float:
    """Median seconds of running work(part, parts) on `threads` threads."""

    def once() -> float:
        start = time.perf_counter()
        list(pool.map(lambda i: work(i, threads), range(threads)))
        return time.perf_counter() - start

    once()
    return statistics.median(once() for _ in range(repeats))


def half(array: np.ndarray, i: int, parts: int) -> np.ndarray:
    step = len(array) // parts
    return array[i * step : (i + 1) * step]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=512, help="array size in MiB (>= 256)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    nbytes = args.mib * 2**20
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.zeros_like(src)
    raw = src.view(np.uint8)
    record = {
        "runtime": "numpy bandwidth",
        "setting": "bandwidth",
        "cpu": rt_common.cpu_name(),
        "array_mib": args.mib,
        "numpy": np.__version__,
        "repeats": args.repeats,
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    reads = {
        "max_uint8": lambda i, n: np.max(half(raw, i, n)),
        "sum_int64": lambda i, n: np.sum(half(raw.view(np.int64), i, n)),
        "sum_float32": lambda i, n: np.sum(half(src, i, n)),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        for threads in (1, 2):
            seconds = timed(lambda i, n: np.copyto(half(dst, i, n), half(src, i, n)), threads, pool, args.repeats)
            record[f"copy_gb_s_{threads}t"] = 2 * nbytes / seconds / 1e9
            rates = {}
            for name, work in reads.items():
                rates[name] = nbytes / timed(work, threads, pool, args.repeats) / 1e9
            record[f"read_gb_s_{threads}t_by_method"] = rates
            record[f"read_gb_s_{threads}t"] = max(rates.values())
            print(f"{threads} thread(s): copy {record[f'copy_gb_s_{threads}t']:.1f} GB/s, read {rates}", flush=True)
    rt_common.write_record("bandwidth", "numpy", record)


if __name__ == "__main__":
    main()
