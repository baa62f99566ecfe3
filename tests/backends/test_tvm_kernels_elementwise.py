"""TVM `lookup_te` and `int_add_te` == their NumPy references, bit for bit (ends of the table, int32
edges, per-tensor multipliers)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile.backends.tvm.kernels.elementwise import int_add_te, lookup_te
from qcompile.backends.tvm.target import host_target
from qcompile.intops.dyadic import dyadic_multiplier
from qcompile.intops.int_linear import int_add
from qcompile.intops.lookup import lookup

SHAPE = (3, 40)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def _build(placeholders, out):
    import tvm
    from tvm import te

    return tvm.tirx.build(te.create_prim_func([*placeholders, out]), target=host_target(threads=1))


def _call(lib, inputs, shape, dtype):
    import tvm

    out = tvm.runtime.tensor(np.zeros(shape, dtype))
    lib["main"](*(tvm.runtime.tensor(np.array(x, order="C")) for x in inputs), out)
    return out.numpy()


def test_lookup_clamps_to_the_table_ends() -> None:
    from tvm import te

    rng = np.random.default_rng(0)
    table = rng.integers(0, 256, 300).astype(np.uint8)
    x = rng.integers(-1000, 1000, SHAPE).astype(np.int32)
    x[0, :4] = INT32_MIN, INT32_MAX, -50, 249  # far below / above, the first and last entries
    xs, ts = te.placeholder(SHAPE, "int32", name="x"), te.placeholder((300,), "uint8", name="table")
    lib = _build([xs, ts], lookup_te(xs, ts, -50))
    np.testing.assert_array_equal(_call(lib, [x, table], SHAPE, "uint8"), lookup(x, table, -50))


_INT_ADD: dict = {}


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), log_a=st.floats(-20.0, 0.0), log_b=st.floats(-20.0, 0.0))
def test_int_add_matches_the_reference(seed, log_a, log_b) -> None:
    from tvm import te

    if "lib" not in _INT_ADD:
        a, b = te.placeholder(SHAPE, "int32", name="a"), te.placeholder(SHAPE, "int32", name="b")
        params = [te.placeholder((), "int64", name=n) for n in ("m_a", "e_a", "m_b", "e_b")]
        _INT_ADD["lib"] = _build([a, b, *params], int_add_te(a, b, *params, -(2**15), 2**15 - 1, "int16"))
    rng = np.random.default_rng(seed)
    a = rng.integers(INT32_MIN, INT32_MAX, SHAPE, endpoint=True, dtype=np.int64).astype(np.int32)
    b = rng.integers(-(2**20), 2**20, SHAPE).astype(np.int32)
    a[0, 0], b[0, 1] = INT32_MAX, INT32_MIN
    m_a, e_a = dyadic_multiplier(2.0**log_a)
    m_b, e_b = dyadic_multiplier(2.0**log_b)
    got = _call(_INT_ADD["lib"], [a, b, m_a, e_a, m_b, e_b], SHAPE, "int16")
    np.testing.assert_array_equal(got, int_add(a, b, m_a, e_a, m_b, e_b, -(2**15), 2**15 - 1))
