"""TVM `scores_softmax_te` (the fused ReduceMax → Sub → Requantize → Cast → softmax chain, row-scheduled)
== the NumPy references composed the way the lowering emits them, bit for bit: IBertSoftmax with its
exp table (int32 entries) and with the arithmetic, Shiftmax; scores spanning the int32 range, flat rows,
one-hot rows, a ragged row length; the grid's rounding offset b and a shift of 0."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.backends.tvm.kernels import exp_family, softmax
from qcompile.backends.tvm.kernels.scores_softmax import schedule_rows, scores_softmax_te
from qcompile.backends.tvm.target import host_target
from qcompile.intops.dyadic import dyadic_multiplier
from qcompile.intops.ibert_softmax import ibert_softmax, ibert_softmax_params
from qcompile.intops.int_exp import exp_x0
from qcompile.intops.requantize import requantize
from qcompile.intops.shiftmax import shiftmax

GRID = 20 / 32767  # the lowering's window grid (softmax_rule.WINDOW / GRID)


def _scores(shape, spread: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(-spread, spread, shape).astype(np.int32)
    x[0, 0] = 5  # flat row
    x[0, 1] = -(2**30)
    x[0, 1, 3] = 2**30  # one entry far above the rest: a one-hot row
    return x


def _build_and_run(x, m, e, b, lo, hi, kernel, constants, table):
    import tvm
    from tvm import te

    xs = te.placeholder(x.shape, "int32", name="scores")
    if table is not None:
        ts = te.placeholder(table.shape, str(table.dtype), name="table")
        out = scores_softmax_te(xs, m, e, b, lo, hi, kernel, *constants, table=ts)
        args, inputs = [xs, ts, out], [x, table]
    else:
        out = scores_softmax_te(xs, m, e, b, lo, hi, kernel, *constants)
        args, inputs = [xs, out], [x]
    lib = tvm.tirx.build(schedule_rows(te.create_prim_func(args)), target=host_target(threads=2))
    result = tvm.runtime.tensor(np.zeros(x.shape, np.int64))
    lib["main"](*(tvm.runtime.tensor(v) for v in inputs), result)
    return result.numpy()


def _grid(x, m, e, b, lo, hi):
    below = x - x.max(axis=-1, keepdims=True)  # int32, as the graph's Sub
    return requantize(below.astype(np.int32), m, e, b, lo, hi).astype(np.int32)


@pytest.mark.parametrize("score_scale, spread", [(0.0123, 3000), (2e-5, 2**30)], ids=["attention", "int32-range"])
@pytest.mark.parametrize("lookup", [True, False], ids=["exp-table", "arithmetic"])
@pytest.mark.parametrize("length", [257, 36])
def test_ibert_chain_matches_the_reference(score_scale, spread, lookup, length) -> None:
    m, e = (int(v) for v in dyadic_multiplier(score_scale / GRID))
    x = _scores((2, 9, length), spread)
    params = ibert_softmax_params(GRID)
    table = softmax.exp_table(*params) if lookup else None
    assert not lookup or table.dtype == np.int32  # the attention grid's table fits int32
    got = _build_and_run(x, m, e, 0, -32767, 0, softmax.ibert_softmax_te, (*params, 16), table)
    np.testing.assert_array_equal(got, ibert_softmax(_grid(x, m, e, 0, -32767, 0), *params, 16))


@pytest.mark.parametrize("b, shift_zero", [(0, False), (-12345, False), (0, True)], ids=["plain", "offset-b", "e=0"])
def test_shiftmax_chain_matches_the_reference(b, shift_zero) -> None:
    m, e = (int(v) for v in dyadic_multiplier(0.0123 / GRID))
    if shift_zero:
        m, e = 3, 0
    x = _scores((3, 7, 257), 3000, seed=1)
    x0 = exp_x0(GRID)
    got = _build_and_run(x, m, e, b, -32767, 0, exp_family.shiftmax_te, (x0, 15, 16), None)
    np.testing.assert_array_equal(got, shiftmax(_grid(x, m, e, b, -32767, 0), x0, 15, 16))
