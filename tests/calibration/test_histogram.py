"""Tests of the streaming histogram: exact streaming, exact range growth, quantiles, degenerate input."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.calibration.histogram import StreamingHistogram, as_float_array, finite_min_max


def _stream(chunks: list[np.ndarray], num_bins: int = 2048) -> StreamingHistogram:
    hist = StreamingHistogram(num_bins)
    for chunk in chunks:
        hist.update(chunk)
    return hist


def _growing_batches(seed: int) -> list[np.ndarray]:
    """Batches whose scale grows (forcing several range doublings), with exact powers of two and zeros."""
    rng = np.random.default_rng(seed)
    batches = [rng.standard_normal((4, 33)).astype(np.float32) * scale for scale in (1e-3, 0.5, 3.0, 40.0, 2.0)]
    batches.append(np.array([0.0, -0.0, 1.0, -1.0, 2.0, -4.0, 64.0], dtype=np.float32))
    batches.append(rng.laplace(size=(7, 5, 3)).astype(np.float32) * 1e3)
    return batches


def test_counts_sum_to_number_of_elements() -> None:
    rng = np.random.default_rng(0)
    hist = _stream([rng.standard_normal(n) for n in (1, 17, 1000, 3, 4096)])
    assert hist.total == 1 + 17 + 1000 + 3 + 4096
    assert int(hist.counts.sum()) == hist.total
    assert hist.counts.dtype == np.int64 and hist.counts.shape == (2048,)


@pytest.mark.parametrize("num_bins", [4, 64, 2048])
def test_streaming_equals_one_shot_bit_for_bit(num_bins: int) -> None:
    batches = _growing_batches(1)
    streamed = _stream(batches, num_bins)
    one_shot = _stream([np.concatenate([b.ravel() for b in batches])], num_bins)
    reversed_order = _stream(batches[::-1], num_bins)
    for other in (one_shot, reversed_order):
        np.testing.assert_array_equal(streamed.counts, other.counts)
        assert streamed.radius == other.radius
        assert (streamed.min, streamed.max, streamed.total) == (other.min, other.max, other.total)


def test_counts_equal_numpy_histogram_on_final_range() -> None:
    batches = _growing_batches(2)
    hist = _stream(batches)
    data = np.concatenate([b.ravel() for b in batches]).astype(np.float64)
    # np.histogram closes the last bin on the right; no value reaches R, so the bins agree exactly.
    expected, edges = np.histogram(data, bins=2048, range=(-hist.radius, hist.radius))
    np.testing.assert_array_equal(hist.counts, expected)
    np.testing.assert_array_equal(hist.edges, edges)


def test_min_max_of_many_small_batches_equal_one_big_batch() -> None:
    rng = np.random.default_rng(3)
    data = rng.standard_t(df=3, size=20_000).astype(np.float32)
    hist = _stream(np.array_split(data, 257))
    assert hist.min == float(data.min()) and hist.max == float(data.max())


def test_radius_is_smallest_power_of_two_above_max_abs() -> None:
    hist = _stream([np.array([0.3, -0.7]), np.array([1.0])])
    assert hist.radius == 2.0  # strictly greater than max|x| = 1
    hist.update(np.array([-2.5]))
    assert hist.radius == 4.0
    assert hist.bin_width == 8.0 / 2048
    assert hist.edges[0] == -4.0 and hist.edges[-1] == 4.0 and hist.edges[1024] == 0.0


def test_value_bins_and_sign_boundary() -> None:
    hist = _stream([np.array([1.0, -1.0, 0.0, -1e-30, 1e-30])], num_bins=8)
    # R = 2, w = 0.5: bins [-2,-1.5) [-1.5,-1) [-1,-0.5) [-0.5,0) [0,0.5) [0.5,1) [1,1.5) [1.5,2)
    np.testing.assert_array_equal(hist.counts, [0, 0, 1, 1, 2, 0, 1, 0])


def test_range_growth_preserves_total_and_rebins_exactly() -> None:
    rng = np.random.default_rng(4)
    small = rng.uniform(-0.9, 0.9, size=5000)
    hist = _stream([small])
    assert hist.radius == 1.0
    before = hist.counts.copy()
    hist.update(np.array([1000.0]))  # 2**10 > 1000: ten doublings at once
    assert hist.radius == 1024.0
    assert hist.total == 5001 and int(hist.counts.sum()) == 5001
    # every new bin is the sum of 1024 adjacent old bins, placed around 0
    np.testing.assert_array_equal(hist.counts[1023:1025], before.reshape(2, 1024).sum(axis=1))
    assert hist.counts[1024 + 1000] == 1  # w = 1
    assert int(hist.counts.sum() - hist.counts[1023] - hist.counts[1024] - hist.counts[2024]) == 0


def test_growth_beyond_resolution_keeps_sign_split() -> None:
    hist = _stream([np.array([-1e-3, -2e-3, 5e-4]), np.array([3e20])], num_bins=16)
    assert hist.radius == 2.0**69  # 2**68 < 3e20 < 2**69, w = 2**66: 3e20 is in bin 8 + 4
    assert hist.counts[7] == 2 and hist.counts[8] == 1 and hist.counts[12] == 1
    assert int(hist.counts.sum()) == 4


def test_merge_equals_one_shot() -> None:
    batches = _growing_batches(5)
    left, right = _stream(batches[:3]), _stream(batches[3:])
    right_copy = right.counts.copy()
    left.merge(right)
    np.testing.assert_array_equal(left.counts, _stream(batches).counts)
    np.testing.assert_array_equal(right.counts, right_copy)  # the merged-in histogram is untouched
    zeros = _stream([np.zeros(10)])
    zeros.merge(_stream(batches))
    zeros.merge(StreamingHistogram())
    assert zeros.total == 10 + sum(b.size for b in batches)
    with pytest.raises(ValueError, match="bins"):
        zeros.merge(StreamingHistogram(64))


@pytest.mark.parametrize("dist", ["uniform", "normal"])
@pytest.mark.parametrize("q", [0.0, 0.001, 0.1, 0.5, 0.9, 0.999, 1.0])
def test_quantile_within_one_bin_of_numpy(dist: str, q: float) -> None:
    rng = np.random.default_rng(6)
    data = rng.uniform(-3.0, 5.0, 100_000) if dist == "uniform" else rng.standard_normal(100_000) * 2.0 + 0.5
    hist = _stream(np.array_split(data.astype(np.float32), 50))
    expected = np.quantile(data.astype(np.float32).astype(np.float64), q)
    assert abs(hist.quantile(q) - expected) <= hist.bin_width
    assert hist.min <= hist.quantile(q) <= hist.max


@pytest.mark.parametrize("q", [0.5, 0.99, 0.9999])
def test_abs_quantile_within_one_bin_of_numpy(q: float) -> None:
    rng = np.random.default_rng(7)
    data = rng.standard_normal(200_000)
    hist = _stream(np.array_split(data, 20))
    assert abs(hist.abs_quantile(q) - np.quantile(np.abs(data), q)) <= hist.bin_width
    np.testing.assert_array_equal(hist.abs_counts(), hist.counts[1024:] + hist.counts[:1024][::-1])


def test_quantile_rejects_bad_probability_and_empty() -> None:
    hist = StreamingHistogram()
    with pytest.raises(ValueError, match="empty"):
        hist.quantile(0.5)
    hist.update(np.ones(3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        hist.quantile(1.5)


def test_all_zero_tensors() -> None:
    hist = _stream([np.zeros((3, 4)), np.zeros(5, dtype=np.float32)])
    assert hist.radius == 0.0 and hist.total == 17 and hist.counts[1024] == 17
    assert hist.quantile(0.5) == 0.0 and hist.abs_quantile(0.99) == 0.0
    hist.update(np.array([3.0, -3.0]))
    assert hist.radius == 4.0
    assert hist.counts[1024] == 17 and hist.total == 19  # zeros stay in the bin [0, w)
    assert hist.quantile(0.5) == pytest.approx(0.0, abs=hist.bin_width)


def test_empty_batch_is_noop() -> None:
    hist = _stream([np.zeros((0, 4)), np.array([])])
    assert hist.total == 0 and hist.radius == 0.0


@pytest.mark.parametrize("bad,word", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_nan_and_inf_raise_and_leave_state_unchanged(bad: float, word: str) -> None:
    hist = _stream([np.array([0.5, -0.25])])
    counts = hist.counts.copy()
    with pytest.raises(ValueError, match=word):
        hist.update(np.array([1.0, bad, 2.0], dtype=np.float32))
    np.testing.assert_array_equal(hist.counts, counts)
    assert hist.total == 2 and hist.max == 0.5


@pytest.mark.parametrize("num_bins", [0, 2, 3, 100, 2049, 1 << 25])
def test_invalid_num_bins(num_bins: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        StreamingHistogram(num_bins)


@pytest.mark.parametrize("num_bins", [2048.0, True, "2048"])
def test_non_integer_num_bins(num_bins: object) -> None:
    with pytest.raises(TypeError, match="num_bins"):
        StreamingHistogram(num_bins)  # type: ignore[arg-type]


def test_state_does_not_grow_with_samples() -> None:
    rng = np.random.default_rng(8)
    hist = StreamingHistogram()
    size = hist.nbytes
    for k in range(500):
        hist.update(rng.standard_normal(64) * (1 + k))
    assert hist.nbytes == size == 2048 * 8
    assert hist.counts.shape == (2048,) and hist.total == 500 * 64


def test_counts_view_is_read_only() -> None:
    hist = _stream([np.ones(4)])
    with pytest.raises(ValueError):
        hist.counts[0] = 7


def test_input_dtypes() -> None:
    assert as_float_array(np.ones(2, np.float16)).dtype == np.float32
    assert as_float_array(np.ones(2, np.int8)).dtype == np.float64
    x = np.ones(2, np.float32)
    assert as_float_array(x) is x
    with pytest.raises(ValueError, match="complex"):
        as_float_array(np.ones(2, np.complex64))
    hist = _stream([np.array([1, -2, 3], dtype=np.int32), np.array([0.5], dtype=np.float16)])
    assert (hist.min, hist.max, hist.total) == (-2.0, 3.0, 4)
    assert finite_min_max(np.array([2.0, -1.0])) == (-1.0, 2.0)
