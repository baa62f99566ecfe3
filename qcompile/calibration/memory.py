"""Peak resident memory of this process over a block of work, sampled by a background thread.

`ru_maxrss` is the peak over the whole process life, so it cannot show what one phase costs; this
samples RSS every `interval` seconds while the block runs and reports the maximum seen (MiB).
"""

from __future__ import annotations

import threading

import psutil

__all__ = ["PeakRSS"]


class PeakRSS:
    """Context manager: `with PeakRSS() as peak: ...` then `peak.mb`."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self._process = psutil.Process()
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._peak = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._process.memory_info().rss)

    @property
    def mb(self) -> float:
        return self._peak / 2**20
