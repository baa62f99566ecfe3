"""Dyadic multipliers and `qcompile.Requantize`: ONNX Runtime == NumPy reference == exact rational rounding.

The exact reference uses Python integers: floor((x·m + b) / 2^e + 1/2) = (x·m + b + 2^(e−1)) // 2^e, clamped.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnxscript import INT32, INT64, script
from onnxscript import opset18 as op

from qcompile.intops.dyadic import MAX_SHIFT, dyadic_multiplier
from qcompile.intops.requantize import Requantize, requantize

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


@script(default_opset=op)
def _requantize_model(x: INT32, m: INT64, e: INT64, b: INT64, lo: INT64, hi: INT64) -> INT64:
    return Requantize(x, m, e, b, lo, hi)


_SESSION = ort.InferenceSession(
    _requantize_model.to_model_proto().SerializeToString(), providers=["CPUExecutionProvider"]
)


def _ort(x, m, e, lo, hi, b=0) -> np.ndarray:
    feeds = {
        "x": x,
        "m": np.asarray(m, np.int64),
        "e": np.asarray(e, np.int64),
        "b": np.asarray(b, np.int64),
        "lo": np.array(lo, np.int64),
        "hi": np.array(hi, np.int64),
    }
    return _SESSION.run(None, feeds)[0]


def _exact(x: np.ndarray, m, e, lo: int, hi: int, b=0) -> np.ndarray:
    m, e, b = np.broadcast_to(m, x.shape), np.broadcast_to(e, x.shape), np.broadcast_to(b, x.shape)
    out = [
        min(max((int(v) * int(mm) + int(bb) + ((1 << int(ee)) >> 1)) >> int(ee), lo), hi)
        for v, mm, ee, bb in zip(x.ravel(), m.ravel(), e.ravel(), b.ravel())
    ]
    return np.array(out, dtype=np.int64).reshape(x.shape)


# --- dyadic multipliers ----------------------------------------------------------------------------------


@given(st.floats(min_value=2.0**-30, max_value=2.0**30, allow_nan=False, allow_infinity=False))
def test_dyadic_multiplier_approximates_the_ratio_within_2_to_the_minus_31(ratio: float) -> None:
    m, e = dyadic_multiplier(ratio)
    assert 2**30 <= int(m) < 2**31 and 0 <= int(e) <= MAX_SHIFT
    assert abs(int(m) / 2.0 ** int(e) - ratio) <= ratio * 2.0**-31


def test_a_mantissa_that_rounds_up_to_2_to_the_31_is_renormalized() -> None:
    ratio = 1.0 - 2.0**-40  # frexp fraction just below 1: f·2^31 rounds to 2^31
    m, e = dyadic_multiplier(ratio)
    assert int(m) == 2**30 and int(e) == 30


def test_tiny_ratios_cap_the_shift_and_zero_gives_zero() -> None:
    m, e = dyadic_multiplier(np.array([2.0**-40, 2.0**-70, 0.0]))
    assert list(e) == [MAX_SHIFT, MAX_SHIFT, 0]
    assert int(m[0]) == 2**22 and int(m[1]) == 0 and int(m[2]) == 0


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), 2.0**31])
def test_invalid_ratios_are_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="dyadic multiplier"):
        dyadic_multiplier(bad)


# --- requantize ---------------------------------------------------------------------------------------------

_RANGES = [(-128, 127), (-(2**15), 2**15 - 1), (0, 255), (INT32_MIN, INT32_MAX)]


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.integers(INT32_MIN, INT32_MAX), min_size=1, max_size=64),
    offset=st.integers(-(2**61), 2**61),
    ratio=st.floats(min_value=2.0**-40, max_value=2.0**8, allow_nan=False),
    bounds=st.sampled_from(_RANGES),
)
def test_onnx_runtime_matches_the_reference_bit_for_bit(values, offset, ratio, bounds) -> None:
    x = np.array(values, dtype=np.int32)
    m, e = dyadic_multiplier(ratio)
    lo, hi = bounds
    expected = _exact(x, m, e, lo, hi, offset)
    np.testing.assert_array_equal(requantize(x, m, e, offset, lo, hi), expected)
    np.testing.assert_array_equal(_ort(x, m, e, lo, hi, offset), expected)


def test_overflow_edges_and_ties() -> None:
    # the largest products (|x·m| → 2^62) and exact ties (x·m = k·2^e + 2^(e−1)) at both signs
    x = np.array([INT32_MIN, INT32_MAX, -1, 1, -3, 3, 0], dtype=np.int32)
    for m, e in ((2**31 - 1, 62), (2**31 - 1, 31), (1, 1), (3, 1), (2**30, 31)):
        for lo, hi in _RANGES:
            expected = _exact(x, m, e, lo, hi)
            np.testing.assert_array_equal(_ort(x, m, e, lo, hi), expected)
            np.testing.assert_array_equal(requantize(x, m, e, 0, lo, hi), expected)
    # ties round up: 1·1/2 → 1, −1·1/2 → 0, 3/2 → 2, −3/2 → −1
    np.testing.assert_array_equal(requantize(np.array([1, -1, 3, -3], np.int32), 1, 1, 0, -128, 127), [1, 0, 2, -1])


def test_per_channel_multipliers_broadcast_over_the_last_axis() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(-(2**20), 2**20, size=(3, 5, 8)).astype(np.int32)
    m, e = dyadic_multiplier(rng.uniform(1e-4, 1e-2, size=8))
    expected = _exact(x, m, e, -128, 127)
    np.testing.assert_array_equal(_ort(x, m, e, -128, 127), expected)
    np.testing.assert_array_equal(requantize(x, m, e, 0, -128, 127), expected)


def test_requantize_approximates_the_real_rescaling_within_half_a_step() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(-(2**24), 2**24, size=1000).astype(np.int32)
    ratio = 3.7e-6
    m, e = dyadic_multiplier(ratio)
    out = requantize(x, m, e, 0, INT32_MIN, INT32_MAX)
    assert np.max(np.abs(out - x.astype(np.float64) * ratio)) <= 0.5 + np.max(np.abs(x)) * ratio * 2.0**-31


def test_the_addend_is_rounded_with_the_product() -> None:
    # x·m/2^e = 0.25 and b/2^e = 0.375: together 0.625 → 1, rounded apart 0 + 0 = 0
    np.testing.assert_array_equal(requantize(np.array([1], np.int32), 2, 3, 3, -128, 127), [1])
    np.testing.assert_array_equal(_ort(np.array([1], np.int32), 2, 3, -128, 127, 3), [1])


def test_a_sum_that_could_overflow_int64_is_refused_by_the_reference() -> None:
    with pytest.raises(OverflowError, match="2\\^63"):
        requantize(np.array([INT32_MIN], np.int32), 2**31, 62, 2**62, INT32_MIN, INT32_MAX)


def test_non_int32_input_is_rejected() -> None:
    with pytest.raises(TypeError, match="int32"):
        requantize(np.array([1], np.int64), 1, 0, 0, -1, 1)
