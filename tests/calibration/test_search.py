"""RepQ-ViT's quantile + MSE search (`calibration.search`): the candidate it picks, per tensor and per
channel, the zero-containing range, and the log√2 Δ search.

Expected choices are recomputed here with an independent fake quantizer (the asymmetric b-bit grid of the
module docstring, written out in NumPy) and `np.argmin` over the candidates' mean squared errors.
"""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.calibration.search import QUANTILES, log_sqrt2_search, uniform_search
from qcompile.ir.quant_meta import QuantSpec


def fake_quant(x: np.ndarray, lo: float, hi: float, bits: int) -> np.ndarray:
    """Asymmetric b-bit quantizer on [min(lo, 0), max(hi, 0)], as the module docstring defines it."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    levels = 2**bits - 1
    step = max((hi - lo) / levels, 1e-8)
    zero = np.clip(np.round(-lo / step), 0, levels)
    return (np.clip(np.round(x / step) + zero, 0, levels) - zero) * step


def candidates(x: np.ndarray) -> list[tuple[float, float]]:
    return [(float(np.quantile(x, 1.0 - p)), float(np.quantile(x, p))) for p in QUANTILES]


def best_candidate(x: np.ndarray, bits: int) -> tuple[int, list[float]]:
    errors = [float(np.mean((x - fake_quant(x, lo, hi, bits)) ** 2)) for lo, hi in candidates(x)]
    return int(np.argmin(errors)), errors


def _data(kind: str, n: int = 20000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return {
        "t3": lambda: rng.standard_t(3, n),
        "t1.5": lambda: rng.standard_t(1.5, n),
        "normal": lambda: rng.normal(1.0, 2.0, n),
        "laplace": lambda: rng.laplace(0.0, 1.0, n),
        "lognormal": lambda: rng.lognormal(0.0, 1.5, n),
    }[kind]()


# (data, bits) pairs chosen so that the winner is the first, second and third candidate in turn
# (checked by test_the_cases_exercise_every_candidate below), i.e. the search is not always p = 0.999.
CASES = [
    ("t3", 3),
    ("t3", 6),
    ("t1.5", 2),
    ("t1.5", 4),
    ("normal", 7),
    ("normal", 8),
    ("laplace", 6),
    ("lognormal", 4),
    ("lognormal", 8),
]


@pytest.mark.parametrize(("kind", "bits"), CASES)
def test_per_tensor_search_picks_the_candidate_with_the_smallest_mse(kind, bits):
    x = _data(kind)
    index, errors = best_candidate(x, bits)
    assert sorted(errors)[0] < sorted(errors)[1]  # a strict winner, so the comparison below means something
    lo, hi = candidates(x)[index]
    params = uniform_search(x, bits, per_channel=False)
    assert np.ndim(params.lo) == 0 and np.ndim(params.scale) == 0
    assert params.lo == pytest.approx(min(lo, 0.0), rel=1e-12, abs=1e-15)
    assert params.hi == pytest.approx(max(hi, 0.0), rel=1e-12, abs=1e-15)
    step = (max(hi, 0.0) - min(lo, 0.0)) / (2**bits - 1)
    assert params.scale == pytest.approx(step, rel=1e-12)
    assert params.zero_point == np.round(-min(lo, 0.0) / step)
    # and its fake quantizer is the one whose error was computed
    np.testing.assert_allclose(params.fake_quantize(x), fake_quant(x, lo, hi, bits), rtol=0, atol=1e-12)


def test_the_cases_exercise_every_candidate():
    assert {best_candidate(_data(kind), bits)[0] for kind, bits in CASES} == {0, 1, 2}


def test_per_tensor_search_flattens_any_shape():
    x = _data("t3").reshape(20, 50, 20)
    flat = uniform_search(x.reshape(-1), 4, per_channel=False)
    shaped = uniform_search(x, 4, per_channel=False)
    assert (shaped.lo, shaped.hi, shaped.zero_point) == (flat.lo, flat.hi, flat.zero_point)


@pytest.mark.parametrize("bits", [4, 8])
def test_per_channel_search_equals_per_tensor_search_on_every_column(bits):
    kinds = ["t3", "t1.5", "normal", "laplace", "lognormal", "t3"]
    scales = [1e-3, 1.0, 50.0, 0.02, 7.0, 3e3]  # very different channel magnitudes
    x = np.stack([s * _data(k, n=5000, seed=i) for i, (k, s) in enumerate(zip(kinds, scales))], axis=1)
    params = uniform_search(x, bits, per_channel=True)
    assert params.scale.shape == (len(kinds),)
    for c in range(x.shape[1]):
        column = uniform_search(x[:, c], bits, per_channel=False)
        assert params.lo[c] == column.lo and params.hi[c] == column.hi
        assert params.scale[c] == column.scale and params.zero_point[c] == column.zero_point
        # and against the independent argmin
        index, _ = best_candidate(x[:, c], bits)
        lo, hi = candidates(x[:, c])[index]
        assert params.hi[c] == pytest.approx(max(hi, 0.0), rel=1e-12)
        assert params.lo[c] == pytest.approx(min(lo, 0.0), rel=1e-12, abs=1e-300)
    # the per-channel steps follow the channel magnitudes (a shared range would not)
    assert params.scale.max() / params.scale.min() > 1e5
    # per channel, the fake quantizer works column-wise
    expected = np.stack(
        [uniform_search(x[:, c], bits, False).fake_quantize(x[:, c]) for c in range(x.shape[1])], axis=1
    )
    np.testing.assert_allclose(params.fake_quantize(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "x",
    [
        np.random.default_rng(0).uniform(5.0, 10.0, 4000),  # all positive: lo clamps to 0
        np.random.default_rng(1).uniform(-10.0, -5.0, 4000),  # all negative: hi clamps to 0
        np.random.default_rng(2).normal(0.3, 1.0, 4000),
    ],
    ids=["positive", "negative", "mixed"],
)
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_zero_is_always_inside_the_range_and_exactly_representable(x, bits):
    for params in (
        uniform_search(x, bits, per_channel=False),
        uniform_search(np.stack([x, -x, x + 20], 1), bits, per_channel=True),
    ):
        assert np.all(params.lo <= 0.0) and np.all(params.hi >= 0.0)
        assert np.all((params.zero_point >= 0) & (params.zero_point <= 2**bits - 1))
        assert np.all(params.zero_point == np.round(params.zero_point))
        zeros = np.zeros((1,) + np.shape(params.scale))
        assert np.all(params.fake_quantize(zeros) == 0.0)
    positive = uniform_search(np.abs(x) + 5.0, bits, per_channel=False)
    assert positive.lo == 0.0 and positive.zero_point == 0
    negative = uniform_search(-np.abs(x) - 5.0, bits, per_channel=False)
    assert negative.hi == 0.0 and negative.zero_point == 2**bits - 1


def test_raw_min_max_is_never_a_candidate():
    x = np.concatenate([np.random.default_rng(0).normal(0, 1, 100000), [1e4]])
    params = uniform_search(x, 8, per_channel=False)
    assert params.hi < 10.0  # the lone outlier is clipped, the 0.99999 quantile is far below it


def _softmaxish(seed: int, temperature: float, rows: int = 400, tokens: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, temperature, (rows, tokens))
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).reshape(-1)


def _log_errors(x: np.ndarray, bits: int) -> tuple[list[float], list[float]]:
    deltas = [float(np.quantile(x, p)) for p in QUANTILES]
    errors = []
    for delta in deltas:
        spec = QuantSpec(bits, False, np.float32(delta), np.int32(0), None, kind="log_sqrt2")
        errors.append(float(np.mean((x - spec.fake_quantize(x).astype(np.float64)) ** 2)))
    return deltas, errors


LOG_CASES = [(0.5, 3), (0.5, 4), (0.5, 8), (2.0, 4), (2.0, 8), (4.0, 4), (8.0, 8)]


@pytest.mark.parametrize(("temperature", "bits"), LOG_CASES)
def test_log_sqrt2_search_returns_the_quantile_candidate_with_the_smallest_mse(temperature, bits):
    x = _softmaxish(seed=int(temperature * 10) + bits, temperature=temperature)
    deltas, errors = _log_errors(x, bits)
    delta = log_sqrt2_search(x, bits)
    assert delta in deltas
    assert delta == deltas[int(np.argmin(errors))]
    assert 0.0 < delta <= 1.0


def test_the_log_cases_exercise_more_than_one_candidate():
    chosen = set()
    for temperature, bits in LOG_CASES:
        x = _softmaxish(seed=int(temperature * 10) + bits, temperature=temperature)
        chosen.add(int(np.argmin(_log_errors(x, bits)[1])))
    assert len(chosen) >= 2


def test_log_sqrt2_search_on_all_zero_samples_gives_the_minimum_step():
    delta = log_sqrt2_search(np.zeros(100), 4)
    assert 0.0 < delta <= 1e-6
