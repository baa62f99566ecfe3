"""TVM int16-pair batched matmul (`int_batch_matmul`) == NumPy int64 matmul bit for bit: 8-bit-range
operands in int32 (Q·Kᵀ), softmax-range A up to 2^16 split into limbs (P·V, int64) with both signs,
ragged shapes; `fits` refuses bounds whose int32 accumulators could overflow; the tile uses vpmaddwd."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile.backends.tvm.kernels.int_batch_matmul import fits, int_batch_matmul_func, schedule_int_batch_matmul
from qcompile.backends.tvm.target import cpu_features, host_target

pytestmark = pytest.mark.skipif("avx2" not in cpu_features(host_target(1)), reason="the int16-pair kernel needs AVX2")


def _run(batch, m, k, n, dtype, bound_a, bound_b, seed=0):
    import tvm

    rng = np.random.default_rng(seed)
    a = rng.integers(-bound_a, bound_a + 1, (batch, m, k)).astype(dtype)
    b = rng.integers(-bound_b, bound_b + 1, (batch, k, n)).astype(dtype)
    a[0, 0], b[0, :, 0] = bound_a, bound_b  # the extreme row × column
    a[-1, -1], b[-1, :, -1] = -bound_a, bound_b
    lib = tvm.tirx.build(schedule_int_batch_matmul(int_batch_matmul_func(batch, m, k, n, dtype, bound_a)), target=host_target(2))
    out = tvm.runtime.tensor(np.zeros((batch, m, n), dtype))
    lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), out)
    return out.numpy(), a.astype(np.int64) @ b.astype(np.int64), lib


@pytest.mark.parametrize(
    "batch, m, k, n, dtype, bound_a, bound_b",
    [(6, 197, 64, 197, "int32", 255, 255), (3, 13, 197, 64, "int64", 65536, 255), (2, 5, 7, 9, "int64", 2**20, 255), (1, 1, 1, 1, "int32", 255, 127)],
    ids=["qk-int32", "pv-limbs-int64", "ragged-limbs", "scalar"],
)
def test_batch_matmul_equals_numpy(batch, m, k, n, dtype, bound_a, bound_b) -> None:
    assert fits(k, bound_a, bound_b)
    got, expected, lib = _run(batch, m, k, n, dtype, bound_a, bound_b)
    np.testing.assert_array_equal(got, expected)
    assert "vpmaddwd" in lib.inspect_source("asm")


def test_fits_refuses_overflowing_bounds() -> None:
    assert fits(257, 65536, 255)  # attention P·V: 258·256·255 < 2^31
    assert not fits(64, 255, 2**15)  # B does not fit int16
    assert not fits(2**16, 255, 255)  # 65536·255·255 ≥ 2^31
    assert not fits(4, 2**24, 255)  # the high limb no longer fits int16


@settings(max_examples=8, deadline=None)
@given(
    batch=st.integers(1, 3), m=st.integers(1, 13), k=st.integers(1, 30), n=st.integers(1, 20),
    wide=st.booleans(), seed=st.integers(0, 2**16),
)
def test_batch_matmul_property(batch, m, k, n, wide, seed) -> None:
    bound_a, dtype = (2**16, "int64") if wide else (255, "int32")
    got, expected, _ = _run(batch, m, k, n, dtype, bound_a, 255, seed)
    np.testing.assert_array_equal(got, expected)
