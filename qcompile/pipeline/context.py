"""What passes may need beyond the model: calibration data, a seed, a progress flag.

`CalibrationData` is a re-iterable source of feed dicts (name -> array), batch by batch, so calibration
streams over it and never holds all samples at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np

from qcompile.errors import InputError

__all__ = ["Feeds", "CalibrationData", "PipelineContext"]

Feeds = dict[str, np.ndarray]


@dataclasses.dataclass
class CalibrationData:
    """`batches()` yields feed dicts; `samples` is the number of samples over all batches."""

    batches: Callable[[], Iterator[Feeds]]
    samples: int

    @classmethod
    def from_list(cls, feeds: list[Feeds]) -> CalibrationData:
        """Wrap an in-memory list of batches (tests, small models)."""
        if not feeds or any(not f for f in feeds):
            raise InputError("calibration data needs at least one batch, and every batch at least one input")
        samples = sum(next(iter(f.values())).shape[0] for f in feeds)
        return cls(batches=lambda: iter(feeds), samples=samples)

    def first_batch(self, max_samples: int | None = None) -> Feeds:
        """The first batch, cut to at most `max_samples` samples (used for numeric checks)."""
        feeds = next(iter(self.batches()), None)
        if feeds is None:
            raise InputError("the calibration data yields no batches")
        if max_samples is None:
            return feeds
        return {k: v[:max_samples] for k, v in feeds.items()}


@dataclasses.dataclass
class PipelineContext:
    """Shared by the passes of one run."""

    calibration: CalibrationData | None = None
    seed: int = 0
    progress: bool = True
    threads: int = 2
    # decoder LLMs: named token-id prefixes of the model's tokenizer ("bos", "system": the chat template's
    # system turn), for passes such as intact-kv; empty where the task has no tokenizer
    prompt_prefixes: dict[str, list[int]] = dataclasses.field(default_factory=dict)
