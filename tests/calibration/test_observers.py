"""Tests of the range observers: the ranges they choose, degenerate input, errors, constant memory, speed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qcompile.calibration.observers import (
    KL_EPS,
    MIN_RANGE_WIDTH,
    OBSERVERS,
    ChannelAbsMax,
    EntropyObserver,
    MinMaxObserver,
    MseObserver,
    Observer,
    PercentileObserver,
    _kl_divergences,
    make_observer,
)
from qcompile.errors import InputError


def fake_quant(x: np.ndarray, lo: float, hi: float, bits: int, symmetric: bool) -> np.ndarray:
    """The quantizer a range stands for (see the observers module docstring), written out independently."""
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        step = hi / qmax
        return step * np.clip(np.round(x / step), -qmax, qmax)
    qmax = 2**bits - 1
    step = (hi - lo) / qmax
    zero = np.clip(np.round(-lo / step), 0, qmax)
    return step * (np.clip(np.round(x / step) + zero, 0, qmax) - zero)


def quant_mse(x: np.ndarray, rng: tuple[float, float], bits: int, symmetric: bool) -> float:
    return float(np.mean((x - fake_quant(x, rng[0], rng[1], bits, symmetric)) ** 2))


def observe(obs: Observer, data: np.ndarray, batches: int = 10) -> Observer:
    for batch in np.array_split(data, batches):
        obs.update(batch)
    return obs


@pytest.fixture(scope="module")
def heavy_tailed() -> np.ndarray:
    """Laplace(0, 1) with a few large outliers."""
    data = np.random.default_rng(10).laplace(size=400_000)
    data[[5, 500, 5000, 50_000, 70_000, 90_000]] = [40.0, -35.0, 50.0, 30.0, -45.0, 60.0]
    return data


# ------------------------------------------------------------------------------------------------ min/max


def test_minmax_streaming_equals_one_batch() -> None:
    data = np.random.default_rng(0).standard_normal((64, 7, 5)).astype(np.float32) * 3 + 1
    streamed = observe(MinMaxObserver(), data, batches=64)
    whole = observe(MinMaxObserver(), data, batches=1)
    assert streamed.range() == whole.range() == (float(data.min()), float(data.max()))
    assert (streamed.min, streamed.max, streamed.count) == (float(data.min()), float(data.max()), data.size)
    sym = observe(MinMaxObserver(symmetric=True), data, batches=64)
    peak = float(np.abs(data).max())
    assert sym.range() == (-peak, peak)


@pytest.mark.parametrize("name", OBSERVERS)
def test_every_observer_tracks_raw_min_max(name: str) -> None:
    data = np.random.default_rng(1).standard_normal(30_000) * 2 - 0.5
    streamed = observe(make_observer(name), data, batches=300)
    assert (streamed.min, streamed.max) == (data.min(), data.max())
    lo, hi = streamed.range()
    assert min(data.min(), 0) <= lo <= 0 <= hi <= max(data.max(), 0)


def test_minmax_range_includes_zero() -> None:
    obs = observe(MinMaxObserver(), np.array([2.0, 3.0, 5.0]), batches=1)
    assert obs.range() == (0.0, 5.0)


# --------------------------------------------------------------------------------------------- percentile


def test_percentile_normal_999() -> None:
    data = np.random.default_rng(2).standard_normal(1_000_000)
    sym = observe(PercentileObserver(percentile=99.9, symmetric=True), data)
    # P(|X| > 3.2905) = 0.001; sampling sd of the quantile at n = 1e6 is ~0.009, one bin is 0.0078.
    assert sym.range()[1] == pytest.approx(3.2905, abs=0.03)
    assert sym.range()[0] == -sym.range()[1]
    asym = observe(PercentileObserver(percentile=99.9), data)
    lo, hi = asym.range()
    assert lo == pytest.approx(-3.0902, abs=0.03) and hi == pytest.approx(3.0902, abs=0.03)


def test_percentile_matches_numpy_within_one_bin() -> None:
    data = np.random.default_rng(3).gamma(2.0, size=300_000) - 1.0
    obs = observe(PercentileObserver(percentile=99.0), data, batches=30)
    width = obs.histogram.bin_width
    assert abs(obs.range()[1] - np.percentile(data, 99.0)) <= width
    assert abs(obs.range()[0] - np.percentile(data, 1.0)) <= width
    sym = observe(PercentileObserver(percentile=99.0, symmetric=True), data, batches=30)
    assert abs(sym.range()[1] - np.percentile(np.abs(data), 99.0)) <= width


def test_percentile_100_is_min_max() -> None:
    data = np.random.default_rng(4).standard_normal(10_000)
    obs = observe(PercentileObserver(percentile=100), data)
    assert obs.range() == (data.min(), data.max())


# -------------------------------------------------------------------------------------------------- MSE


@pytest.mark.parametrize("symmetric", [True, False])
def test_mse_clips_heavy_tail_and_beats_minmax(heavy_tailed: np.ndarray, symmetric: bool) -> None:
    bits = 4
    mse = observe(MseObserver(bits=bits, symmetric=symmetric), heavy_tailed, batches=40)
    minmax = observe(MinMaxObserver(bits=bits, symmetric=symmetric), heavy_tailed)
    lo, hi = mse.range()
    assert hi < 0.2 * minmax.range()[1] and lo > 0.2 * minmax.range()[0]
    err, err_minmax = (
        quant_mse(heavy_tailed, (lo, hi), bits, symmetric),
        quant_mse(heavy_tailed, minmax.range(), bits, symmetric),
    )
    assert err < 0.1 * err_minmax  # measured: 0.08 vs 1.8 (symmetric), 0.075 vs 1.6
    # the histogram model of the error agrees with the error measured on the data
    assert mse.expected_error(lo, hi) == pytest.approx(err, rel=0.01)


def test_mse_symmetric_near_brute_force_optimum(heavy_tailed: np.ndarray) -> None:
    for bits in (2, 4):
        obs = observe(MseObserver(bits=bits, symmetric=True), heavy_tailed)
        chosen = quant_mse(heavy_tailed, obs.range(), bits, True)
        best = min(quant_mse(heavy_tailed, (-t, t), bits, True) for t in np.linspace(0.5, 10.0, 400))
        assert chosen <= best * 1.005


@pytest.mark.parametrize("bits,expected,tol", [(4, 14 / 15, 0.004), (8, 254 / 255, 0.003)])
def test_mse_uniform_matches_optimal_uniform_quantizer(bits: int, expected: float, tol: float) -> None:
    # For U(-1, 1) the optimal 2**b - 1 level uniform quantizer puts its outer levels at 1 - step / 2.
    data = np.random.default_rng(5).uniform(-1.0, 1.0, 400_000)
    obs = observe(MseObserver(bits=bits, symmetric=True), data)
    assert obs.range()[1] == pytest.approx(expected, abs=tol)


def test_mse_asymmetric_one_signed_keeps_zero_at_bottom() -> None:
    data = np.maximum(np.random.default_rng(6).standard_normal(200_000), 0.0)
    data[:3] = [20.0, 25.0, 30.0]
    obs = observe(MseObserver(bits=4), data)
    lo, hi = obs.range()
    assert lo == 0.0 and 2.0 < hi < 6.0
    assert quant_mse(data, (lo, hi), 4, False) < quant_mse(data, (0.0, 30.0), 4, False)


def test_mse_expected_error_validates_range() -> None:
    obs = observe(MseObserver(), np.array([-1.0, 1.0]))
    with pytest.raises(ValueError, match="lo <= 0 <= hi"):
        obs.expected_error(0.5, 1.0)


# ---------------------------------------------------------------------------------------------- entropy


def _naive_kl(hist: np.ndarray, levels: int, i: int) -> float:
    """KL(P || Q) for candidate `i`, written as the TensorRT recipe with a Python loop over the groups."""
    h = hist.astype(np.float64)
    if h[:i].sum() == 0:
        return math.inf
    p = h[:i].copy()
    p[i - 1] += h[i:].sum()
    q = np.zeros(i)
    m = i // levels
    for k in range(levels):
        lo, hi = k * m, (k + 1) * m if k < levels - 1 else i
        mask = p[lo:hi] > 0
        if mask.any():
            q[lo:hi][mask] = h[lo:hi].sum() / mask.sum()
    q[(p > 0) & (q == 0)] = KL_EPS
    pp, qq = p / p.sum(), q / q.sum()
    nz = pp > 0
    return float(np.sum(pp[nz] * np.log(pp[nz] / qq[nz])))


@pytest.mark.parametrize("levels,size", [(2, 37), (8, 200), (16, 100), (128, 700)])
def test_fast_kl_equals_naive_recipe(levels: int, size: int) -> None:
    rng = np.random.default_rng(levels)
    hist = rng.poisson(5.0, size) * (rng.random(size) < 0.6)  # many empty bins
    hist[:3] = 0
    hist[-1] = 4
    fast = _kl_divergences(hist, levels)
    naive = np.array([_naive_kl(hist, levels, i) for i in range(levels, size + 1)])
    assert np.array_equal(np.isinf(fast), np.isinf(naive))
    np.testing.assert_allclose(fast[np.isfinite(fast)], naive[np.isfinite(naive)], rtol=1e-9, atol=1e-12)


def test_entropy_clips_outliers() -> None:
    data = np.random.default_rng(7).standard_normal(500_000)
    data[[1, 10, 100, 1000, 10_000, 100_000]] = [50.0, -50.0, 45.0, -40.0, 48.0, -47.0]
    sym = observe(EntropyObserver(bits=8, symmetric=True), data)
    t = sym.range()[1]
    assert 3.5 < t < 6.0  # 50 without clipping
    asym = observe(EntropyObserver(bits=8), data)
    assert asym.range() == (-t, t)  # mixed signs: the same threshold, inside [min, max]
    relu = observe(EntropyObserver(bits=8), np.maximum(data, 0.0))
    lo, hi = relu.range()
    assert lo == 0.0 and 4.0 < hi < 10.0


def test_entropy_without_outliers_keeps_most_of_the_range() -> None:
    data = np.random.default_rng(8).uniform(-1.0, 1.0, 300_000)
    obs = observe(EntropyObserver(bits=8, symmetric=True), data)
    assert obs.range()[1] > 0.97


def test_entropy_16_bits_does_not_clip() -> None:
    data = np.random.default_rng(9).standard_normal(10_000)
    obs = observe(EntropyObserver(bits=16, symmetric=True), data)
    assert obs.range()[1] == np.abs(data).max()


# ----------------------------------------------------------------------------------- degenerate & errors


@pytest.mark.parametrize("name", OBSERVERS)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("value", [0.0, 2.5, -1e-3, 1e-40])
@pytest.mark.parametrize("bits", [2, 8, 16])
def test_degenerate_tensors_get_a_usable_range(name: str, symmetric: bool, value: float, bits: int) -> None:
    obs = make_observer(name, bits=bits, symmetric=symmetric)
    obs.update(np.full((3, 5), value, dtype=np.float32))
    obs.update(np.full(7, value))
    lo, hi = obs.range()
    assert lo <= 0.0 <= hi and hi - lo >= MIN_RANGE_WIDTH
    if symmetric:
        assert lo == -hi
    levels = 2 ** (bits - 1) - 1 if symmetric else 2**bits - 1
    scale = np.float32((hi if symmetric else hi - lo) / levels)
    assert scale > 0 and np.isfinite(scale) and np.isfinite(np.float32(1.0) / scale)
    if value != 0.0 and abs(value) > MIN_RANGE_WIDTH:  # a constant tensor is represented exactly by its range
        assert lo <= np.float32(value) <= hi


@pytest.mark.parametrize("name", OBSERVERS)
def test_nan_and_inf_raise(name: str) -> None:
    obs = make_observer(name)
    obs.update(np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="NaN"):
        obs.update(np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(ValueError, match="inf"):
        obs.update(np.array([-np.inf, 0.0]))
    assert obs.count == 2 and obs.range()[1] >= 1.0  # state unchanged by the rejected batches


@pytest.mark.parametrize("name", OBSERVERS)
def test_range_before_update_raises(name: str) -> None:
    obs = make_observer(name)
    obs.update(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="no data"):
        obs.range()
    with pytest.raises(ValueError, match="no data"):
        _ = obs.min


def test_make_observer_unknown_name_lists_valid_names() -> None:
    with pytest.raises(InputError) as info:
        make_observer("kl")
    message = str(info.value)
    assert "'kl'" in message
    for name in OBSERVERS:
        assert name in message


def test_make_observer_options() -> None:
    obs = make_observer("Percentile", bits=4, symmetric=True, percentile=99.0, num_bins=512)
    assert isinstance(obs, PercentileObserver) and obs.percentile == 99.0 and obs.histogram.num_bins == 512
    assert (obs.bits, obs.symmetric) == (4, True)
    with pytest.raises(InputError, match="unknown option.*valid options: percentile, num_bins"):
        make_observer("percentile", percentil=99.0)
    with pytest.raises(InputError, match="valid options: \\(none\\)"):
        make_observer("minmax", num_bins=64)
    with pytest.raises(InputError, match="percentile"):
        make_observer("percentile", percentile=40.0)
    with pytest.raises(InputError, match="num_bins"):
        make_observer("mse", num_bins=1000)
    assert set(OBSERVERS) == {"minmax", "percentile", "mse", "entropy"}


@pytest.mark.parametrize("bits", [1, 17, 0, 8.0, True])
def test_bits_out_of_range(bits: object) -> None:
    for name in OBSERVERS:
        with pytest.raises(InputError, match="bits"):
            make_observer(name, bits=bits)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- memory and speed


@pytest.mark.parametrize("name", OBSERVERS)
def test_state_size_constant_over_500_batches(name: str) -> None:
    rng = np.random.default_rng(11)
    obs = make_observer(name)
    obs.update(rng.standard_normal(256))
    size = obs.nbytes
    for k in range(500):
        obs.update(rng.standard_normal(256) * (1 + k % 7) + k % 3)
    assert obs.nbytes == size
    if name != "minmax":
        assert obs.histogram.counts.size == obs.histogram.num_bins
    arrays = [v for v in vars(obs).values() if isinstance(v, np.ndarray)]
    assert all(a.size <= 4096 for a in arrays)
    assert obs.count == 501 * 256


# --------------------------------------------------------------------------------------------- channels


def test_channel_abs_max_streams() -> None:
    data = np.random.default_rng(13).standard_normal((40, 9, 6)).astype(np.float32)
    data[3, 2, 4] = -70.0
    obs = ChannelAbsMax()
    size = None
    for batch in np.array_split(data, 20):
        obs.update(batch)
        size = obs.nbytes if size is None else size
        assert obs.nbytes == size
    np.testing.assert_array_equal(obs.value, np.abs(data).max(axis=(0, 1)).astype(np.float64))
    assert obs.value[4] == 70.0 and obs.num_channels == 6
    obs.update(np.zeros((0, 6)))
    with pytest.raises(ValueError, match="channels"):
        obs.update(np.ones((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        obs.update(np.full((1, 6), np.nan))


def test_channel_abs_max_errors() -> None:
    obs = ChannelAbsMax()
    with pytest.raises(ValueError, match="no data"):
        _ = obs.value
    with pytest.raises(ValueError, match="scalar"):
        obs.update(np.float32(1.0))
