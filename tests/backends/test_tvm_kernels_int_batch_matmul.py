"""TVM int16-pair batched matmul (`int_batch_matmul`) == NumPy int64 matmul bit for bit on every path
`plan` picks: plain 8-bit-range operands in int32 (Q·Kᵀ); softmax probabilities through the offset
(Shiftmax's [0, 2^15]) and the offset with one hot entry per row (IBertSoftmax's [0, 2^16], rows that
reach 2^16 included); limbs when no row sum is known; ragged shapes. `plan` refuses bounds whose int32
accumulators could overflow, and needs the row sum for the hot path; the tile uses vpmaddwd."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile.backends.tvm.kernels.int_batch_matmul import (
    Plan,
    fits,
    int_batch_matmul_func,
    plan,
    schedule_int_batch_matmul,
)
from qcompile.backends.tvm.target import cpu_features, host_target

pytestmark = pytest.mark.skipif("avx2" not in cpu_features(host_target(1)), reason="the int16-pair kernel needs AVX2")


def _softmax_rows(rng, shape, top: int, one_hot_rows: int) -> np.ndarray:
    """Rows that sum to at most `top` (floors of a normalized row), some of them one-hot at `top`."""
    e = rng.random(shape) ** 8
    p = np.floor(e / e.sum(-1, keepdims=True) * top).astype(np.int64)
    for r in range(min(one_hot_rows, shape[0] * shape[1])):
        g, i = divmod(r, shape[1])
        p[g, i] = 0
        p[g, i, (5 * r) % shape[2]] = top
    return p


def _run(a: np.ndarray, b: np.ndarray, how: Plan, dtype: str | None = None, zp_a: int = 0, zp_b: int = 0):
    import tvm

    batch, m, k = a.shape
    n = b.shape[2]
    dtype = dtype or str(a.dtype)
    func = int_batch_matmul_func(
        batch, m, k, n, dtype, how, a_dtype=str(a.dtype), b_dtype=str(b.dtype), zp_a=zp_a, zp_b=zp_b
    )
    lib = tvm.tirx.build(schedule_int_batch_matmul(func), target=host_target(2))
    out = tvm.runtime.tensor(np.zeros((batch, m, n), dtype))
    lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), out)
    return out.numpy(), (a.astype(np.int64) - zp_a) @ (b.astype(np.int64) - zp_b), lib


def _symmetric(batch, m, k, n, dtype, bound_a, bound_b, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(-bound_a, bound_a + 1, (batch, m, k)).astype(dtype)
    b = rng.integers(-bound_b, bound_b + 1, (batch, k, n)).astype(dtype)
    a[0, 0], b[0, :, 0] = bound_a, bound_b  # the extreme row × column
    a[-1, -1], b[-1, :, -1] = -bound_a, bound_b
    return a, b


@pytest.mark.parametrize(
    "batch, m, k, n, dtype, bound_a, bound_b, mode",
    [
        (6, 197, 64, 197, "int32", 255, 255, "plain"),
        (3, 13, 197, 64, "int64", 65536, 255, "limbs"),
        (2, 5, 7, 9, "int64", 2**20, 255, "limbs"),
        (1, 1, 1, 1, "int32", 255, 127, "plain"),
    ],
    ids=["qk-int32", "pv-limbs-int64", "ragged-limbs", "scalar"],
)
def test_symmetric_ranges(batch, m, k, n, dtype, bound_a, bound_b, mode) -> None:
    how = plan(k, bound_b, -bound_a, bound_a)
    assert how is not None and how.mode == mode and fits(k, bound_a, bound_b)
    got, expected, lib = _run(*_symmetric(batch, m, k, n, dtype, bound_a, bound_b), how)
    np.testing.assert_array_equal(got, expected)
    # vpmaddwd, or vpdpwssd where LLVM folds it with the vpaddd after it (CPUs with AVX-VNNI): the same exact pair sums
    assert re.search(r"\b(vpmaddwd|vpdpwssd)\b", lib.inspect_source("asm"))


@pytest.mark.parametrize("top, hot", [(2**16, True), (2**15, False)], ids=["ibert-2^16-hot", "shiftmax-2^15"])
def test_softmax_probabilities_through_the_offset(top, hot) -> None:
    rng = np.random.default_rng(3)
    a = _softmax_rows(rng, (3, 29, 257), top, one_hot_rows=5)
    b = rng.integers(-128, 128, (3, 257, 40))
    b[:, :, 0] = 127  # a column at the bound: one-hot rows × 127 · 2^16
    how = plan(257, 128, 0, top, row_sum_a=top)
    assert how == Plan("offset", 2**15, hot=hot)
    got, expected, _ = _run(a, b.astype(np.int64), how)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "a_dtype, zp_a, b_dtype, zp_b", [("uint8", 131, "uint8", 7), ("int8", -3, "uint8", 255), ("int64", 0, "int8", 0)]
)
def test_narrow_codes_are_centred_while_packing(a_dtype, zp_a, b_dtype, zp_b) -> None:
    """Q·Kᵀ as the lowering leaves it: uint8/int8 codes with zero points, product in int32."""
    rng = np.random.default_rng(4)
    info_a, info_b = np.iinfo(a_dtype), np.iinfo(b_dtype)
    a = rng.integers(max(info_a.min, -255), min(info_a.max, 255) + 1, (6, 37, 64)).astype(a_dtype)
    b = rng.integers(info_b.min, info_b.max + 1, (6, 64, 45)).astype(b_dtype)
    lo_a, hi_a = int(a.min()) - zp_a, int(a.max()) - zp_a
    bound_b = max(abs(int(info_b.min) - zp_b), abs(int(info_b.max) - zp_b))
    how = plan(64, bound_b, lo_a, hi_a)
    assert how.mode == "plain"
    got, expected, _ = _run(a, b, how, dtype="int32", zp_a=zp_a, zp_b=zp_b)
    np.testing.assert_array_equal(got, expected)


def test_plan_needs_the_row_sum_for_a_hot_entry() -> None:
    assert plan(257, 128, 0, 2**16).mode == "limbs"  # no row sum: two entries could reach 2^16
    assert plan(257, 128, 0, 2**16, row_sum_a=2**17).mode == "limbs"  # two hot entries possible
    assert plan(257, 128, 0, 2**16, row_sum_a=2**17 - 1) == Plan("offset", 2**15, hot=True)
    assert plan(257, 128, 100, 100 + 2**16 - 1) == Plan("offset", 100 + 2**15)  # any range 2^16 wide


def test_plan_refuses_overflowing_bounds() -> None:
    assert fits(257, 65536, 255)  # attention P·V by limbs: 258·256·255 < 2^31
    assert not fits(64, 255, 2**15)  # B does not fit int16
    assert not fits(2**16, 255, 255)  # 65536·255·255 ≥ 2^31
    assert not fits(4, 2**24, 255)  # the high limb no longer fits int16
    assert plan(2**9, 128, 0, 2**15, row_sum_a=2**15).mode == "limbs"  # 512·2^15·128 = 2^31: offset overflows
    assert plan(8, 128, 5, 4) is None  # an empty range


@settings(max_examples=8, deadline=None)
@given(
    batch=st.integers(1, 3),
    m=st.integers(1, 13),
    k=st.integers(1, 30),
    n=st.integers(1, 20),
    path=st.sampled_from(["plain", "limbs", "hot"]),
    seed=st.integers(0, 2**16),
)
def test_batch_matmul_property(batch, m, k, n, path, seed) -> None:
    if path == "hot":
        rng = np.random.default_rng(seed)
        a = _softmax_rows(rng, (batch, m, k), 2**16, one_hot_rows=seed % 4)
        b = rng.integers(-255, 256, (batch, k, n))
        how = plan(k, 255, 0, 2**16, row_sum_a=2**16)
        got, expected, _ = _run(a, b.astype(np.int64), how)
    else:
        bound_a, dtype = (2**16, "int64") if path == "limbs" else (255, "int32")
        how = plan(k, 255, -bound_a, bound_a)
        assert how.mode == path
        got, expected, _ = _run(*_symmetric(batch, m, k, n, dtype, bound_a, 255, seed), how)
    np.testing.assert_array_equal(got, expected)
