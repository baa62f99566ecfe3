"""TVM `ibert_softmax_te` == NumPy `ibert_softmax` bit for bit at 16-bit score scales: rows with a
dominant entry, flat rows, rows clamped at 30 halvings, 8- and 16-bit outputs."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.backends.tvm.kernels.softmax import MAX_TABLE, exp_table, ibert_softmax_te
from qcompile.backends.tvm.target import host_target
from qcompile.intops.ibert_softmax import ibert_softmax, ibert_softmax_params

ROWS, LENGTH = 5, 257


@pytest.mark.parametrize("lookup", [False, True], ids=["arithmetic", "exp-table"])
@pytest.mark.parametrize("scale, out_bits", [(2.0**-10, 16), (3e-4, 16), (0.01, 8)])
def test_ibert_softmax_matches_the_reference(scale, out_bits, lookup) -> None:
    import tvm
    from tvm import te

    params = ibert_softmax_params(scale)
    rng = np.random.default_rng(0)
    x = rng.integers(-(2**15), 2**15, (ROWS, LENGTH)).astype(np.int32)
    x[1] = 7  # flat row
    x[2, 3] = 2**15 - 1  # one dominant entry; the rest underflow past 30 halvings
    x[3] = rng.integers(-3, 3, LENGTH)
    xs = te.placeholder(x.shape, "int32", name="x")
    table = exp_table(*params) if lookup else None
    if lookup and table is None:
        assert 30 * abs(params[0]) + 1 > MAX_TABLE
        pytest.skip("this scale's table exceeds MAX_TABLE: the converter keeps the arithmetic")
    if lookup:
        ts = te.placeholder(table.shape, str(table.dtype), name="table")
        func, inputs = te.create_prim_func([xs, ts, ibert_softmax_te(xs, *params, out_bits, table=ts)]), [x, table]
    else:
        func, inputs = te.create_prim_func([xs, ibert_softmax_te(xs, *params, out_bits)]), [x]
    lib = tvm.tirx.build(func, target=host_target(threads=1))
    out = tvm.runtime.tensor(np.zeros(x.shape, np.int64))
    lib["main"](*(tvm.runtime.tensor(v) for v in inputs), out)
    np.testing.assert_array_equal(out.numpy(), ibert_softmax(x, *params, out_bits))
