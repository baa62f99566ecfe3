"""Bounded uniform samples of activations (reservoir sampling, Vitter's algorithm R, vectorized).

Searches that need the values themselves (quantiles, per-channel MSE) keep a uniform random sample of
at most `capacity` rows (`RowSampler`: rows of the last axis, one per token) or scalars (`ValueSampler`).
Item t (0-based, over all batches) replaces slot j ~ U{0..t} when j < capacity, so every item seen is
kept with probability capacity / seen: memory is fixed, whatever the number of calibration samples.
Both have the observer interface that `calibration.runner.stream_statistics` drives (`update(array)`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["RowSampler", "ValueSampler"]


class _Reservoir:
    def __init__(self, capacity: int, seed: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be ≥ 1, got {capacity}")
        self.capacity = capacity
        self.seen = 0
        self._rng = np.random.default_rng(seed)
        self._buffer: np.ndarray | None = None
        self._filled = 0

    def _add(self, items: np.ndarray) -> None:
        if self._buffer is None:
            self._buffer = np.empty((self.capacity, *items.shape[1:]), dtype=np.float32)
        elif items.shape[1:] != self._buffer.shape[1:]:
            raise ValueError(f"item shape {items.shape[1:]} differs from earlier {self._buffer.shape[1:]}")
        free = min(self.capacity - self._filled, len(items))
        self._buffer[self._filled : self._filled + free] = items[:free]
        self._filled += free
        rest = items[free:]
        if len(rest):
            positions = self.seen + free + np.arange(len(rest))
            slots = (self._rng.random(len(rest)) * (positions + 1)).astype(np.int64)
            keep = slots < self.capacity
            self._buffer[slots[keep]] = rest[keep]
        self.seen += len(items)

    def sample(self) -> np.ndarray:
        if self._buffer is None:
            raise ValueError("no data was sampled")
        return self._buffer[: self._filled]


class RowSampler(_Reservoir):
    """Uniform sample of rows x[..., :] (all leading axes flattened); `sample()` is [rows, C]."""

    def __init__(self, capacity: int = 8192, seed: int = 0) -> None:
        super().__init__(capacity, seed)

    def update(self, array: np.ndarray) -> None:
        array = np.asarray(array, dtype=np.float32)
        self._add(array.reshape(-1, array.shape[-1]) if array.ndim else array.reshape(1, 1))


class ValueSampler(_Reservoir):
    """Uniform sample of scalars of every element; `sample()` is 1-D."""

    def __init__(self, capacity: int = 1 << 20, seed: int = 0) -> None:
        super().__init__(capacity, seed)

    def update(self, array: np.ndarray) -> None:
        self._add(np.asarray(array, dtype=np.float32).reshape(-1))
