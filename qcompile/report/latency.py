"""Side-by-side latency: several sessions timed in one process on the same inputs.

Each session is warmed up, then the sessions are timed in interleaved rounds (A, B, C, A, B, C, …) so
that machine noise hits all of them alike; the figure is the median per session, in milliseconds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

__all__ = ["measure_latency"]


def measure_latency(runners: dict[str, Callable[[], object]], warmup: int = 3, rounds: int = 15) -> dict[str, float]:
    """Median wall time (ms) of each zero-argument runner over `rounds` interleaved rounds."""
    for runner in runners.values():
        for _ in range(warmup):
            runner()
    samples: dict[str, list[float]] = {label: [] for label in runners}
    for _ in range(rounds):
        for label, runner in runners.items():
            start = time.perf_counter()
            runner()
            samples[label].append((time.perf_counter() - start) * 1000.0)
    return {label: statistics.median(values) for label, values in samples.items()}
