"""`qcompile.IBertSoftmax` as TE computes over the last axis (int64 inside; constants compile-time).

    d = max(I − max_row I, 30·x0),  q = ⌊d/x0⌋,  r = d − q·x0,
    e = ((r·(r + b_int) + c_int) << n) >> q,  f = ⌊2^62 / Σ_row e⌋,  out = (e·f) >> (62 − b_out)

exactly `qcompile.intops.ibert_softmax` (floordiv by the negative x0 is TIR floordiv, the reference's
`//`). Stages: the row max, e per element (stored: a row schedule keeps one row of it), the row sum
and factor, the output.
"""

from __future__ import annotations

from qcompile.intops.ibert_softmax import MAX_HALVINGS

__all__ = ["ibert_softmax_te", "exp_table", "MAX_TABLE"]

MAX_TABLE = 1 << 16  # entries (512 KB of int64); larger tables fall back to the arithmetic


def exp_table(x0: int, b_int: int, c_int: int, n: int):
    """e for every d in [30·x0, 0] (index d − 30·x0), by the reference's own formula; None if too large.
    int32 when every entry fits (half the cache footprint), else int64; the kernel widens it to int64."""
    import numpy as np

    low = MAX_HALVINGS * x0
    if 1 - low > MAX_TABLE:
        return None
    d = np.arange(low, 1, dtype=np.int64)
    q = d // x0
    r = d - q * x0
    e = ((r * (r + b_int) + c_int) << n) >> q
    return e.astype(np.int32) if e.max(initial=0) < 2**31 and e.min(initial=0) >= -(2**31) else e


def ibert_softmax_te(x, x0: int, b_int: int, c_int: int, n: int, out_bits: int, table=None):
    """The softmax; with `table` (a TE tensor of `exp_table`) e is one lookup per element instead of the
    division, polynomial and shifts (3× faster on DINOv2's scores; the values are the same integers)."""
    from tvm import te, tirx

    *rows, length = (int(dim) for dim in x.shape)
    const = lambda value: tirx.const(value, "int64")  # noqa: E731
    k = te.reduce_axis((0, length), "k")
    row_max = te.compute(rows, lambda *r: te.max(x[(*r, k)].astype("int64"), axis=k), name="sm_max")

    def exp(index):
        d = tirx.max(x[index].astype("int64") - row_max[index[:-1]], const(MAX_HALVINGS * x0))
        if table is not None:
            return table[d - const(MAX_HALVINGS * x0)].astype("int64")
        q = tirx.floordiv(d, const(x0))
        r = d - q * const(x0)
        return tirx.shift_right(tirx.shift_left(r * (r + const(b_int)) + const(c_int), const(n)), q)

    e = te.compute(x.shape, lambda *i: exp(i), name="sm_exp")
    k2 = te.reduce_axis((0, length), "k2")
    total = te.compute(rows, lambda *r: te.sum(e[(*r, k2)], axis=k2), name="sm_sum")
    factor = te.compute(
        rows, lambda *r: tirx.floordiv(tirx.shift_left(const(1), const(62)), total[r]), name="sm_factor"
    )
    return te.compute(
        x.shape, lambda *i: tirx.shift_right(e[i] * factor[i[:-1]], const(62 - out_bits)), name="ibert_softmax"
    )
