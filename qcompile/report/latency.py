"""Side-by-side latency: several sessions timed in one process on the same inputs.

Sessions are timed in rounds; in each round every session runs `block` times back to back and the
first run of each block is discarded. ONNX Runtime's intra-op threads spin for a while after a run, so
a session timed right after another one would otherwise share the cores with the previous session's
spinning threads (seen as MiniLM FP32 timing far slower when strictly interleaved with three other
sessions than alone; the fp rows of benchmarks/results/zoo.md show the remaining noise). Rounds still alternate the sessions so slow machine phases hit all of them alike.
The figure is the median over all kept runs, in milliseconds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

__all__ = ["measure_latency"]


def measure_latency(
    runners: dict[str, Callable[[], object]], warmup: int = 3, rounds: int = 15, block: int = 4
) -> dict[str, float]:
    """Median wall time (ms) of each zero-argument runner: `rounds` rounds of `block` runs, first dropped."""
    for runner in runners.values():
        for _ in range(warmup):
            runner()
    samples: dict[str, list[float]] = {label: [] for label in runners}
    for _ in range(max(1, rounds // max(1, block - 1))):
        for label, runner in runners.items():
            for index in range(block):
                start = time.perf_counter()
                runner()
                if index:
                    samples[label].append((time.perf_counter() - start) * 1000.0)
    return {label: statistics.median(values) for label, values in samples.items()}
