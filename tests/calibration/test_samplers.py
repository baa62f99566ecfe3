"""Reservoir samplers (`calibration.samplers`): bounded size, real rows, uniformity, determinism, errors.

Rows are tagged with their global index (exact in float32 below 2^24), so the test can tell which input
rows were kept and check the sample's distribution against the uniform one.
"""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.calibration.samplers import RowSampler, ValueSampler


def tagged_rows(start: int, count: int, channels: int = 3) -> np.ndarray:
    """Rows [i, 2i + 0.5, −i, …] for i in start..start+count−1: each row is unique and names its index."""
    index = np.arange(start, start + count, dtype=np.float64)[:, None]
    return np.concatenate([index, 2 * index + 0.5, -index, np.zeros((count, channels - 3))], axis=1).astype(np.float32)


def feed_rows(sampler: RowSampler, total: int, batch: int, leading: tuple[int, ...] = ()) -> None:
    """Feed `total` tagged rows in batches of `batch` rows, shaped [*leading, batch/prod(leading), 3]."""
    for start in range(0, total, batch):
        rows = tagged_rows(start, min(batch, total - start))
        sampler.update(rows.reshape(*leading, -1, rows.shape[-1]) if leading else rows)


def kept_indices(sampler: RowSampler) -> np.ndarray:
    sample = sampler.sample()
    return sample[:, 0].astype(np.int64)


# ------------------------------------------------------------------------------------------- RowSampler


def test_fewer_rows_than_capacity_are_all_kept_in_order():
    sampler = RowSampler(capacity=100, seed=0)
    batches = [tagged_rows(0, 8).reshape(2, 4, 3), tagged_rows(8, 12).reshape(3, 4, 3), tagged_rows(20, 10)]
    for batch in batches:
        sampler.update(batch)
    expected = np.concatenate([b.reshape(-1, 3) for b in batches])
    np.testing.assert_array_equal(sampler.sample(), expected)
    assert sampler.seen == 30


def test_exactly_capacity_rows_are_all_kept():
    sampler = RowSampler(capacity=64, seed=3)
    feed_rows(sampler, 64, 16)
    np.testing.assert_array_equal(sampler.sample(), tagged_rows(0, 64))


@pytest.mark.parametrize("batch", [1, 7, 250, 5000])
def test_the_sample_never_exceeds_the_capacity_and_holds_only_real_distinct_rows(batch):
    capacity, total = 100, 5000
    sampler = RowSampler(capacity=capacity, seed=1)
    seen = 0
    for start in range(0, total, batch):
        rows = tagged_rows(start, min(batch, total - start))
        sampler.update(rows)
        seen += len(rows)
        assert len(sampler.sample()) == min(seen, capacity)
    sample = sampler.sample()
    indices = sample[:, 0].astype(np.int64)
    assert sample.shape == (capacity, 3)
    assert len(set(indices.tolist())) == capacity  # a reservoir keeps each row at most once
    assert np.all((indices >= 0) & (indices < total))
    np.testing.assert_array_equal(sample, tagged_rows(0, total)[indices])  # whole rows, unchanged


def test_leading_axes_are_flattened_into_rows():
    sampler = RowSampler(capacity=1000, seed=0)
    x = np.arange(2 * 3 * 5 * 4, dtype=np.float32).reshape(2, 3, 5, 4)
    sampler.update(x)
    np.testing.assert_array_equal(sampler.sample(), x.reshape(-1, 4))


def test_a_different_last_axis_is_a_value_error():
    sampler = RowSampler(capacity=10, seed=0)
    sampler.update(np.zeros((4, 8), np.float32))
    with pytest.raises(ValueError, match="differs"):
        sampler.update(np.zeros((4, 9), np.float32))


def test_a_scalar_update_is_one_row_of_one_value():
    sampler = RowSampler(capacity=4, seed=0)
    sampler.update(np.float32(2.5))
    sampler.update(np.array([7.0]))
    np.testing.assert_array_equal(sampler.sample(), [[2.5], [7.0]])


@pytest.mark.parametrize("capacity", [0, -3])
def test_a_capacity_below_one_is_a_value_error(capacity):
    with pytest.raises(ValueError, match="capacity"):
        RowSampler(capacity=capacity)
    with pytest.raises(ValueError, match="capacity"):
        ValueSampler(capacity=capacity)


def test_sampling_before_any_update_is_a_value_error():
    with pytest.raises(ValueError, match="no data"):
        RowSampler().sample()
    with pytest.raises(ValueError, match="no data"):
        ValueSampler().sample()


@pytest.mark.parametrize(("batch", "leading"), [(1000, (4,)), (100_000, ()), (37, ())])
def test_the_sample_is_approximately_uniform_over_all_rows(batch, leading):
    total, capacity = 100_000, 5000
    sampler = RowSampler(capacity=capacity, seed=11)
    feed_rows(sampler, total, batch, leading)
    indices = kept_indices(sampler)
    assert len(indices) == capacity
    # mean of a uniform sample of 0..99999: 49999.5 ± 408 (one standard error); allow 3 % (≈ 3.7 σ)
    assert abs(indices.mean() - (total - 1) / 2) < 0.03 * total
    # each tenth of the stream (early and late batches alike) holds ≈ 500 rows: binomial σ ≈ 21, allow ±100
    counts = np.bincount(indices // (total // 10), minlength=10)
    assert np.all(np.abs(counts - capacity / 10) < 100), counts
    # the very first and the very last batches are represented
    assert np.any(indices < 1000) and np.any(indices >= total - 1000)


def test_every_row_is_kept_with_probability_capacity_over_seen():
    """Algorithm R's invariant, over many seeds: with 10 rows fed as batches of 4, 3, 3 and capacity 3,
    each row is in the sample with probability 3/10 (including the rows that filled the free slots)."""
    runs, hits = 2000, np.zeros(10)
    for seed in range(runs):
        sampler = RowSampler(capacity=3, seed=seed)
        sampler.update(tagged_rows(0, 4))
        sampler.update(tagged_rows(4, 3))
        sampler.update(tagged_rows(7, 3))
        hits[kept_indices(sampler)] += 1
    # binomial standard error sqrt(0.3 · 0.7 / 2000) ≈ 0.010; allow 0.045
    np.testing.assert_allclose(hits / runs, 0.3, atol=0.045)


def test_the_sample_is_fixed_by_the_seed():
    def sample(seed):
        sampler = RowSampler(capacity=200, seed=seed)
        feed_rows(sampler, 10_000, 333)
        return sampler.sample().copy()

    np.testing.assert_array_equal(sample(4), sample(4))
    assert not np.array_equal(sample(4), sample(5))


# ----------------------------------------------------------------------------------------- ValueSampler


def test_value_sampler_keeps_every_value_below_capacity_in_order():
    sampler = ValueSampler(capacity=100, seed=0)
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.arange(12, 20, dtype=np.float32).reshape(2, 2, 2)  # any shape: values are flattened
    sampler.update(a)
    sampler.update(b)
    np.testing.assert_array_equal(sampler.sample(), np.arange(20, dtype=np.float32))
    assert sampler.sample().ndim == 1 and sampler.seen == 20


@pytest.mark.parametrize("batch", [7, 999, 100_000])
def test_value_sampler_is_bounded_real_distinct_and_approximately_uniform(batch):
    total, capacity = 100_000, 5000
    sampler = ValueSampler(capacity=capacity, seed=2)
    for start in range(0, total, batch):
        sampler.update(np.arange(start, min(start + batch, total), dtype=np.float32).reshape(-1, 1))
        assert len(sampler.sample()) == min(start + batch, total, capacity)
    values = sampler.sample()
    assert values.shape == (capacity,)
    assert np.all(values == np.round(values)) and np.all((values >= 0) & (values < total))
    assert len(np.unique(values)) == capacity
    assert abs(values.mean() - (total - 1) / 2) < 0.03 * total
    counts = np.bincount((values // (total // 10)).astype(np.int64), minlength=10)
    assert np.all(np.abs(counts - capacity / 10) < 100), counts


def test_value_sampler_is_fixed_by_the_seed():
    def sample(seed):
        sampler = ValueSampler(capacity=300, seed=seed)
        for start in range(0, 20_000, 1000):
            sampler.update(np.arange(start, start + 1000, dtype=np.float32))
        return sampler.sample().copy()

    np.testing.assert_array_equal(sample(9), sample(9))
    assert not np.array_equal(sample(9), sample(10))
