"""TVM 4-bit-weight × float-activation matmul (`kernels.int4_float_matmul`, w4a16): equal to the float64 product of
the activations and the dequantized weights within float32 rounding (a float kernel, in its own summation order),
for decode and prefill tiles, per-channel and grouped weights with zero points, ragged rows and columns, in every
flavour's lane width the CPU runs; it reads the integer matmul's packing; refusals."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.backends.tvm.fence import fence_float_products
from qcompile.backends.tvm.kernels.int4_float_matmul import int4_float_matmul_func, pack_float_group_params
from qcompile.backends.tvm.kernels.int4_matmul import FLAVOURS, flavours_for, pack_weight
from qcompile.backends.tvm.target import cpu_features, host_target

RUNNABLE = flavours_for(cpu_features(host_target(1)))
pytestmark = pytest.mark.skipif(not RUNNABLE, reason="the 4-bit matmul needs AVX2 at least")
TOLERANCE = 2e-6  # of max |y|: float32 sums of up to 1,536 products in another order


def _run(m, k, n, group, flavour, seed=0, panel=1):
    import tvm

    rng = np.random.default_rng(seed)
    q = rng.integers(0, 16, (k, n))
    zero = rng.integers(0, 16, (k // group, n))
    scale = (rng.random((k // group, n)) * 0.1 + 1e-3).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    lanes = FLAVOURS[flavour]
    func = int4_float_matmul_func(m, k, n, group, flavour, panel=panel)
    lib = tvm.tirx.build(fence_float_products(func), target=host_target(2))
    packed_scale, packed_zero = pack_float_group_params(zero, scale, lanes, panel)
    out = tvm.runtime.tensor(np.zeros((m, packed_scale.shape[1]), np.float32))
    args = [x, pack_weight(q, lanes, panel=panel), packed_scale, packed_zero]
    lib["main"](*(tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args), out)
    rows = np.arange(k) // group
    w = (q - zero[rows]).astype(np.float64) * scale[rows].astype(np.float64)
    return out.numpy()[:, :n], x.astype(np.float64) @ w


@pytest.mark.parametrize("flavour", RUNNABLE)
@pytest.mark.parametrize(
    "m, k, n, group", [(1, 576, 1536, 576), (1, 1536, 576, 128), (5, 576, 40, 64), (13, 64, 24, 32), (3, 8, 8, 8)]
)
def test_equals_the_dequantized_product(m, k, n, group, flavour) -> None:
    got, want = _run(m, k, n, group, flavour)
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE * np.abs(want).max())


@pytest.mark.parametrize("flavour", RUNNABLE)
@pytest.mark.parametrize("m, k, n, group, panel", [(1, 576, 960, 576, 4), (5, 64, 40, 32, 2), (3, 64, 48, 64, 3)])
def test_panels_equal_the_dequantized_product(m, k, n, group, panel, flavour) -> None:
    got, want = _run(m, k, n, group, flavour, seed=1, panel=panel)
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE * np.abs(want).max())


def test_group_params_pad_columns_with_zeros() -> None:
    scale, zero = pack_float_group_params(np.full((2, 3), 8), np.ones((2, 3), np.float32), 8)
    assert scale.shape == zero.shape == (2, 8) and scale.dtype == zero.dtype == np.float32
    assert np.all(scale[:, 3:] == 0) and np.all(zero[:, :3] == 8)


def test_refusals() -> None:
    with pytest.raises(ValueError, match="multiples of 8"):
        int4_float_matmul_func(1, 64, 16, 12, "llvm")
    with pytest.raises(ValueError, match="flavour"):
        int4_float_matmul_func(1, 64, 16, 64, "sse2")
    with pytest.raises(ValueError, match="1024 bytes"):
        int4_float_matmul_func(8, 64, 64, 64, "avx512vnni", rows=4, col_blocks=4)
