"""Paired comparison of classifiers scored on the same samples: which samples each one lost or gained.

With c_ref, c ∈ {0, 1} the per-sample correctness of the reference (first) runner and of another one,

    lost   = #{c_ref = 1, c = 0}       gained = #{c_ref = 0, c = 1}
    drop   = (lost − gained) / n       (accuracy points ×100)
    SE(drop) = sqrt((lost + gained − (lost − gained)²/n) / (n·(n − 1)))      (paired, McNemar-style)

Only the samples on which the two disagree in correctness carry information about the drop, so a drop
smaller than about 2·SE is not distinguishable from zero on that sample count (`drop_interval`).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["PairedTally", "drop_interval"]


class PairedTally:
    """Running per-runner correct counts plus lost/gained counts against the first runner."""

    def __init__(self, labels) -> None:
        self.labels = list(labels)
        self.correct = {label: 0 for label in self.labels}
        self.lost = {label: 0 for label in self.labels}
        self.gained = {label: 0 for label in self.labels}

    def add(self, hits: dict[str, np.ndarray]) -> None:
        """`hits`: {label: bool array, True where that runner's prediction is right}, same samples."""
        reference = np.asarray(hits[self.labels[0]], dtype=bool)
        for label in self.labels:
            hit = np.asarray(hits[label], dtype=bool)
            self.correct[label] += int(hit.sum())
            self.lost[label] += int(np.sum(reference & ~hit))
            self.gained[label] += int(np.sum(~reference & hit))

    def changes(self, label: str) -> dict[str, int]:
        return {"lost": self.lost[label], "gained": self.gained[label]}


def drop_interval(lost: int, gained: int, samples: int) -> tuple[float, float]:
    """(drop, standard error) in accuracy points from the paired counts on `samples` samples."""
    if samples < 2:
        raise ValueError(f"a paired standard error needs at least 2 samples, got {samples}")
    drop = (lost - gained) / samples
    variance = (lost + gained - (lost - gained) ** 2 / samples) / (samples * (samples - 1))
    return 100.0 * drop, 100.0 * math.sqrt(max(variance, 0.0))
