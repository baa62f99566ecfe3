"""`PairedTally` and `drop_interval`: lost/gained counts against the first runner and the paired SE."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qcompile.zoo.paired import PairedTally, drop_interval


def test_tally_counts_lost_and_gained_against_the_first_runner() -> None:
    tally = PairedTally(["fp", "q"])
    tally.add({"fp": np.array([1, 1, 0, 0, 1], bool), "q": np.array([1, 0, 1, 0, 0], bool)})
    tally.add({"fp": np.array([0], bool), "q": np.array([1], bool)})
    assert tally.correct == {"fp": 3, "q": 3}
    assert tally.changes("q") == {"lost": 2, "gained": 2} and tally.changes("fp") == {"lost": 0, "gained": 0}


def test_drop_interval_matches_the_paired_difference_statistics() -> None:
    rng = np.random.default_rng(0)
    reference, other = rng.random(400) < 0.8, rng.random(400) < 0.78
    lost, gained = int(np.sum(reference & ~other)), int(np.sum(~reference & other))
    drop, error = drop_interval(lost, gained, 400)
    difference = reference.astype(float) - other.astype(float)
    assert math.isclose(drop, 100 * difference.mean(), rel_tol=1e-12)
    assert math.isclose(error, 100 * difference.std(ddof=1) / math.sqrt(400), rel_tol=1e-12)


def test_drop_interval_needs_two_samples() -> None:
    with pytest.raises(ValueError, match="at least 2 samples"):
        drop_interval(0, 0, 1)
