"""One sequence through a compiled decoder library (`build.build_decode`): the cache it owns, and the position.

    session = DecodeSession(executable, cache_spec(decoder, capacity), chunk)
    logits = session.prefill(prompt_ids)          # whole chunks through `prefill`, the rest through `decode`
    logits = session.step(next_id)                # one token at `session.position`

The cache is a fixed set of tensors (`CacheSpec.layout`: float [kv_heads, capacity, head_dim] per layer and kind,
or codes, scales and zero points), written in place by the library at the current position; `reset()` empties it,
or puts an intact-kv prefix's float keys and values in front (the sequence then starts at position P). The
attention reads positions up to the current one only, so moving `position` back cuts the cache.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["CacheSpec", "DecodeSession"]


@dataclasses.dataclass
class CacheSpec:
    """(shape, dtype) of every cache tensor in the step functions' argument order, and the intact-kv prefix's
    values by the index of the tensor they fill from position 0."""

    layout: list[tuple[tuple[int, ...], str]]
    prefix: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def capacity(self) -> int:
        return int(self.layout[0][0][1])

    @property
    def prefix_positions(self) -> int:
        return max((int(values.shape[1]) for values in self.prefix.values()), default=0)


class DecodeSession:
    """Runs a library's `decode` (and `prefill`, `chunk` tokens per call; None: the library has none) over one
    sequence of at most `cache.capacity` positions."""

    def __init__(self, executable, cache: CacheSpec, chunk: int | None = 64, device=None) -> None:
        import tvm
        from tvm import relax

        self.cache_spec, self.chunk = cache, chunk
        self.device = device if device is not None else tvm.cpu()
        self.vm = relax.VirtualMachine(executable, self.device)
        self.reset()

    @property
    def capacity(self) -> int:
        return self.cache_spec.capacity

    def reset(self) -> None:
        """An empty cache (or the intact-kv prefix's, whose positions every sequence follows)."""
        import tvm

        arrays = [np.zeros(shape, dtype) for shape, dtype in self.cache_spec.layout]
        for slot, values in self.cache_spec.prefix.items():
            arrays[slot][:, : values.shape[1]] = values
        self.position = self.cache_spec.prefix_positions
        self.cache = [tvm.runtime.tensor(a, self.device) for a in arrays]

    def _run(self, function: str, tokens: np.ndarray) -> np.ndarray:
        import tvm

        self._check_room(len(tokens))
        ids = tvm.runtime.tensor(np.asarray(tokens, np.int32), self.device)
        position = tvm.runtime.tensor(np.array([self.position], np.int32), self.device)
        logits = self.vm[function](ids, position, *self.cache)
        self.position += len(tokens)
        return logits.numpy()[0]

    def _check_room(self, count: int) -> None:
        if self.position + count > self.capacity:
            raise ValueError(
                f"the cache holds {self.capacity} positions ({self.position} used, {count} more asked); "
                "reset() or build with a larger capacity"
            )

    def step(self, token: int) -> np.ndarray:
        """The logits [vocab] after feeding `token` at the next position."""
        return self._run("decode", np.array([token]))

    def prefill(self, tokens) -> np.ndarray:
        """Feed `tokens` (whole chunks through `prefill`, the rest one at a time); the last token's logits."""
        tokens = np.asarray(tokens)
        if len(tokens) == 0:
            raise ValueError("prefill needs at least one token")
        self._check_room(len(tokens))
        whole = (len(tokens) // self.chunk) * self.chunk if self.chunk else 0
        logits = None
        for start in range(0, whole, self.chunk or 1):
            logits = self._run("prefill", tokens[start : start + self.chunk])
        for token in tokens[whole:]:
            logits = self.step(int(token))
        return logits
