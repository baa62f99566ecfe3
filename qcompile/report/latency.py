"""Side-by-side latency: several sessions timed in one process on the same inputs.

Sessions are timed in rounds; in each round every session runs `block` times back to back, after a
`pause`, and the first run of each block is discarded. ONNX Runtime's intra-op threads (and PyTorch's,
and TVM's with its default) spin for a while after a run, so a session timed right after another one
would otherwise share the cores with the previous session's spinning threads. Dropping the first run
is not enough for short runs: benchmarks/results/latency_pause.md (`benchmarks/latency_pause.py`)
times MiniLM (36 tokens, 2 threads) ORT FP32 / INT8 static / INT8 dynamic at 15.2 / 9.1 / 8.8 ms back
to back, 8.0 / 8.0 / 7.1 ms with 20 ms pauses, 7.1 / 5.0 / 4.6 ms with 100 ms pauses and 7.1 / 4.9 / 4.7
ms with 500 ms pauses. The default pause is 200 ms. Rounds still alternate the sessions so slow
machine phases hit all of them alike. The figure is the median over all kept runs, in milliseconds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

__all__ = ["measure_latency"]


def measure_latency(
    runners: dict[str, Callable[[], object]], warmup: int = 3, rounds: int = 15, block: int = 4, pause: float = 0.2
) -> dict[str, float]:
    """Median wall time (ms) of each zero-argument runner: `rounds` rounds of `block` runs, first dropped,
    each block after `pause` seconds (the previous runner's idle threads go to sleep)."""
    for runner in runners.values():
        for _ in range(warmup):
            runner()
    samples: dict[str, list[float]] = {label: [] for label in runners}
    for _ in range(max(1, rounds // max(1, block - 1))):
        for label, runner in runners.items():
            time.sleep(pause)
            for index in range(block):
                start = time.perf_counter()
                runner()
                if index:
                    samples[label].append((time.perf_counter() - start) * 1000.0)
    return {label: statistics.median(values) for label, values in samples.items()}
