"""TVM `requantize_te` (LLVM, host CPU) == NumPy `requantize`, bit for bit, per tensor and per channel,
including the int32 and shift edges."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile.backends.tvm.kernels.requantize import fold_rounding, requantize_expr, requantize_te
from qcompile.backends.tvm.target import host_target
from qcompile.intops.dyadic import dyadic_multiplier
from qcompile.intops.requantize import requantize

ROWS, CHANNELS = 4, 16
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
RANGES = [(-128, 127, "int8"), (0, 255, "uint8"), (-(2**15), 2**15 - 1, "int16"), (INT32_MIN, INT32_MAX, "int32")]
_BUILT: dict = {}


def _kernel(lo: int, hi: int, dtype: str, per_channel: bool):
    key = (lo, hi, dtype, per_channel)
    if key not in _BUILT:
        import tvm
        from tvm import te

        shape = (CHANNELS,) if per_channel else ()
        x = te.placeholder((ROWS, CHANNELS), "int32", name="x")
        m, e, b = (te.placeholder(shape, "int64", name=n) for n in "meb")
        y = requantize_te(x, m, e, b, lo, hi, dtype)
        _BUILT[key] = tvm.tirx.build(te.create_prim_func([x, m, e, b, y]), target=host_target(threads=1))
    return _BUILT[key]


def _run(x, m, e, b, lo, hi, dtype, per_channel):
    import tvm

    lib = _kernel(lo, hi, dtype, per_channel)
    out = tvm.runtime.tensor(np.zeros(x.shape, dtype))
    lib["main"](*(tvm.runtime.tensor(np.array(a, order="C")) for a in (x, m, e, b)), out)
    return out.numpy()


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    log_ratio=st.floats(min_value=-40.0, max_value=8.0),
    per_channel=st.booleans(),
    bounds=st.sampled_from(RANGES),
    offset_bits=st.integers(0, 40),
)
def test_requantize_matches_the_numpy_reference(seed, log_ratio, per_channel, bounds, offset_bits) -> None:
    lo, hi, dtype = bounds
    rng = np.random.default_rng(seed)
    x = rng.integers(INT32_MIN, INT32_MAX, size=(ROWS, CHANNELS), endpoint=True, dtype=np.int64).astype(np.int32)
    x[0, :2] = INT32_MIN, INT32_MAX
    shape = (CHANNELS,) if per_channel else ()
    ratio = 2.0 ** (log_ratio + rng.uniform(-1.0, 1.0, size=shape))
    m, e = dyadic_multiplier(ratio)
    b = rng.integers(-(2**offset_bits), 2**offset_bits, size=shape, endpoint=True).astype(np.int64)
    np.testing.assert_array_equal(
        _run(x, m, e, b, lo, hi, dtype, per_channel), requantize(x, m, e, b, lo, hi).astype(dtype)
    )


@pytest.mark.parametrize("shift", [1, 31, 50])
def test_ties_round_half_up_at_every_shift(shift) -> None:
    x = np.tile(np.array([-3, -2, -1, 0, 1, 2, 3, 5], np.int32), (ROWS, 2))
    m, e = np.int64(1 << (shift - 1)), np.int64(shift)  # x·m / 2^e = x/2: every odd x is a tie
    b = np.int64(0)
    got = _run(x, m, e, b, INT32_MIN, INT32_MAX, "int32", False)
    np.testing.assert_array_equal(got, requantize(x, m, e, b, INT32_MIN, INT32_MAX).astype(np.int32))
    assert list(got[0, :8]) == [-1, -1, 0, 0, 1, 1, 2, 3]  # half up: −1.5 → −1, −0.5 → 0, 2.5 → 3


def _folded_kernel(lo: int, hi: int, dtype: str, shape: tuple, m_dtype: str):
    key = ("folded", lo, hi, dtype, shape, m_dtype)
    if key not in _BUILT:
        import tvm
        from tvm import te

        x = te.placeholder((ROWS, CHANNELS), "int32", name="x")
        m = te.placeholder(shape, m_dtype, name="m")
        e, b = (te.placeholder(shape, "int64", name=n) for n in "eb")
        y = te.compute(
            x.shape, lambda *i: requantize_expr(x[i], i, m, e, b, lo, hi, dtype, rounding_in_b=True), name="y"
        )
        _BUILT[key] = tvm.tirx.build(te.create_prim_func([x, m, e, b, y]), target=host_target(threads=1))
    return _BUILT[key]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    log_ratio=st.floats(min_value=-40.0, max_value=8.0),
    per_channel=st.booleans(),
    bounds=st.sampled_from(RANGES),
)
def test_rounding_folded_into_the_offset_matches_the_reference(seed, log_ratio, per_channel, bounds) -> None:
    """The GEMM epilogue's form: r added to b at build time, m narrowed to int32 when it fits."""
    import tvm

    lo, hi, dtype = bounds
    rng = np.random.default_rng(seed)
    x = rng.integers(INT32_MIN, INT32_MAX, size=(ROWS, CHANNELS), endpoint=True, dtype=np.int64).astype(np.int32)
    x[0, :2] = INT32_MIN, INT32_MAX
    shape = (CHANNELS,) if per_channel else ()
    m, e = dyadic_multiplier(2.0 ** (log_ratio + rng.uniform(-1.0, 1.0, size=shape)))
    b = rng.integers(-(2**20), 2**20, size=shape, endpoint=True).astype(np.int64)
    folded = fold_rounding(m, e, b)
    assert folded[0].dtype == (np.int32 if np.max(m) < 2**31 else np.int64)
    lib = _folded_kernel(lo, hi, dtype, shape, str(folded[0].dtype))
    out = tvm.runtime.tensor(np.zeros(x.shape, dtype))
    lib["main"](*(tvm.runtime.tensor(np.array(a, order="C")) for a in (x, *folded)), out)
    np.testing.assert_array_equal(out.numpy(), requantize(x, m, e, b, lo, hi).astype(dtype))
