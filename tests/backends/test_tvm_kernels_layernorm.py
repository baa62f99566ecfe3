"""TVM `ilayernorm_te` == NumPy `i_layernorm` bit for bit: 22-bit residual rows, constant rows (v = 0),
massive-activation rows, with and without the variance shift."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.backends.tvm.kernels.layernorm import ilayernorm_te
from qcompile.backends.tvm.target import host_target
from qcompile.intops.ilayernorm import i_layernorm

ROWS, CHANNELS = 6, 384


def _run(x: np.ndarray, shift: int) -> np.ndarray:
    import tvm
    from tvm import te

    xs = te.placeholder(x.shape, "int32", name="x")
    lib = tvm.tirx.build(te.create_prim_func([xs, ilayernorm_te(xs, shift)]), target=host_target(threads=1))
    out = tvm.runtime.tensor(np.zeros(x.shape, np.int64))
    lib["main"](tvm.runtime.tensor(x), out)
    return out.numpy()


@pytest.mark.parametrize("shift", [0, 4])
def test_ilayernorm_matches_the_reference(shift) -> None:
    rng = np.random.default_rng(shift)
    x = rng.integers(-(2**21), 2**21, (ROWS, CHANNELS)).astype(np.int32)
    x[1] = 12345  # constant row: v = 0, the σ ≥ 1 guard
    x[2] = rng.integers(-3, 4, CHANNELS)  # tiny variance
    x[3, :2] = 2**26, -(2**26)  # a massive activation
    x[4] = np.where(np.arange(CHANNELS) % 2, 2**22 - 1, -(2**22))  # full 23-bit swing
    np.testing.assert_array_equal(_run(x, shift), i_layernorm(x, shift))
