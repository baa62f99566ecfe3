"""TVM IntExpShift, Shiftmax, ShiftGELU, IntGELU and IntSqrt == their NumPy references bit for bit,
on realistic scales and on the clamps' edges (d at the n·x0 floor, |I| beyond −b, v = 0 and 2^62)."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.backends.tvm.kernels.exp_family import int_exp_shift_te, int_gelu_te, shift_gelu_te, shiftmax_te
from qcompile.backends.tvm.kernels.layernorm import int_sqrt_te
from qcompile.backends.tvm.target import host_target
from qcompile.intops import int_exp, int_gelu, isqrt, shiftgelu, shiftmax


def _run(compute, x: np.ndarray, *constants) -> np.ndarray:
    import tvm
    from tvm import te

    xs = te.placeholder(x.shape, str(x.dtype), name="x")
    lib = tvm.tirx.build(te.create_prim_func([xs, compute(xs, *constants)]), target=host_target(threads=1))
    out = tvm.runtime.tensor(np.zeros(x.shape, np.int64))
    lib["main"](tvm.runtime.tensor(x), out)
    return out.numpy()


def _scores(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(-3000, 3000, (5, 197)).astype(np.int32)
    x[1] = 7  # a constant row
    x[2, 0] = 2**20  # one dominant score: the rest underflow to the exp floor
    return x


@pytest.mark.parametrize("x0, n", [(-1000, 15), (-37, 20)])
def test_int_exp_shift(x0, n) -> None:
    d = np.concatenate([np.arange(-3 * abs(x0) * n, 1), [n * x0 * 10, -(2**30)]]).astype(np.int64)
    np.testing.assert_array_equal(_run(int_exp_shift_te, d, x0, n), int_exp.int_exp_shift(d, x0, n))


@pytest.mark.parametrize("x0, n, bits", [(-1000, 15, 8), (-250, 20, 16)])
def test_shiftmax(x0, n, bits) -> None:
    x = _scores(bits)
    np.testing.assert_array_equal(_run(shiftmax_te, x, x0, n, bits), shiftmax.shiftmax(x, x0, n, bits))


@pytest.mark.parametrize("x0, n, bits", [(-600, 15, 8), (-90, 18, 12)])
def test_shift_gelu(x0, n, bits) -> None:
    x = _scores(n)
    x[3] = -np.abs(x[3])  # an all-negative row: the max is clamped to 0
    np.testing.assert_array_equal(_run(shift_gelu_te, x, x0, n, bits), shiftgelu.shift_gelu(x, x0, n, bits))


def test_int_gelu() -> None:
    b_int, c_int, one, n, _ = int_gelu.int_gelu_params(0.01)
    x = np.concatenate([np.arange(-2 * abs(b_int), 2 * abs(b_int)), [-(2**20), 2**20, 0]]).astype(np.int32)
    np.testing.assert_array_equal(
        _run(int_gelu_te, x, b_int, c_int, one, n), int_gelu.int_gelu(x, b_int, c_int, one, n)
    )


def test_int_sqrt() -> None:
    powers = np.left_shift(np.int64(1), np.arange(63, dtype=np.int64))
    squares = np.arange(0, 3000, dtype=np.int64) ** 2
    v = np.concatenate([[0, 1, 2, 3, 2**62], powers, powers[1:] - 1, squares, squares[1:] - 1, squares + 1])
    v = v[(v >= 0) & (v <= 2**62)]
    np.testing.assert_array_equal(_run(int_sqrt_te, v), isqrt.int_sqrt(v))
