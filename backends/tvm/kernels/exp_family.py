"""I-ViT's shift-based exponential and the kernels built on it, and I-BERT's polynomial GELU, as TE.

    IntExpShift: p = max(d + (d >> 1) − (d >> 4), n·x0),  q = ⌊p/x0⌋,  r = p − q·x0,
                 e = ((r − 2·x0) << (n − q)) >> 1                      (d ≤ 0; x0 < 0; 0 ≤ q ≤ n)
    Shiftmax:    e = IntExpShift(I − max_row I),  out = (e·⌊2^62 / Σ_row e⌋) >> (63 − bits)
    ShiftGELU:   m = max(max_row I, 0),  e1 = IntExpShift(I − m),  e0 = IntExpShift(−m),
                 out = I · ((e1·⌊2^62 / (e1 + e0)⌋) >> (63 − bits))
    IntGELU:     y = sign(I)·((min(|I|, −b) + b)² + c),  out = I·((y >> n) + one)

exactly `qcompile.intops.int_exp` / `shiftmax` / `shiftgelu` / `int_gelu` (int64 throughout; `//` is TIR
floordiv, `>>` an arithmetic shift, `x << k` is x·2^k as the reference's multiplication by 1 << k).
The constants are compile-time Python ints; row reductions are over the last axis.
"""

from __future__ import annotations

__all__ = ["int_exp_expr", "int_exp_shift_te", "shiftmax_te", "shift_gelu_te", "int_gelu_te"]


def _c(value: int):
    from tvm import tirx

    return tirx.const(value, "int64")


def int_exp_expr(d, x0: int, n: int):
    """e for an int64 expression d ≤ 0."""
    from tvm import tirx

    p = tirx.max(d + tirx.shift_right(d, _c(1)) - tirx.shift_right(d, _c(4)), _c(n * x0))
    q = tirx.floordiv(p, _c(x0))
    r = p - q * _c(x0)
    return tirx.shift_right((r - _c(2 * x0)) * tirx.shift_left(_c(1), _c(n) - q), _c(1))


def int_exp_shift_te(d, x0: int, n: int):
    from tvm import te

    return te.compute(d.shape, lambda *i: int_exp_expr(d[i].astype("int64"), x0, n), name="int_exp_shift")


def shiftmax_te(x, x0: int, n: int, out_bits: int):
    from tvm import te, tirx

    *rows, length = (int(dim) for dim in x.shape)
    k = te.reduce_axis((0, length), "k")
    row_max = te.compute(rows, lambda *r: te.max(x[(*r, k)].astype("int64"), axis=k), name="shiftmax_max")

    e = te.compute(x.shape, lambda *i: int_exp_expr(x[i].astype("int64") - row_max[i[:-1]], x0, n), name="shiftmax_exp")
    k2 = te.reduce_axis((0, length), "k2")
    total = te.compute(rows, lambda *r: te.sum(e[(*r, k2)], axis=k2), name="shiftmax_sum")
    factor = te.compute(
        rows, lambda *r: tirx.floordiv(tirx.shift_left(_c(1), _c(62)), total[r]), name="shiftmax_factor"
    )
    return te.compute(x.shape, lambda *i: tirx.shift_right(e[i] * factor[i[:-1]], _c(63 - out_bits)), name="shiftmax")


def shift_gelu_te(x, x0: int, n: int, sigmoid_bits: int):
    from tvm import te, tirx

    *rows, length = (int(dim) for dim in x.shape)
    k = te.reduce_axis((0, length), "k")
    row_max = te.compute(rows, lambda *r: te.max(x[(*r, k)].astype("int64"), axis=k), name="shiftgelu_max")

    def element(*i):
        value = x[i].astype("int64")
        m = tirx.max(row_max[i[:-1]], _c(0))
        e1 = int_exp_expr(value - m, x0, n)
        e0 = int_exp_expr(-m, x0, n)
        sigmoid = tirx.shift_right(e1 * tirx.floordiv(tirx.shift_left(_c(1), _c(62)), e1 + e0), _c(63 - sigmoid_bits))
        return value * sigmoid

    return te.compute(x.shape, element, name="shift_gelu")


def int_gelu_te(x, b_int: int, c_int: int, one: int, n: int):
    from tvm import te, tirx

    def element(*i):
        value = x[i].astype("int64")
        magnitude = tirx.min(tirx.abs(value), _c(-b_int)) + _c(b_int)
        sign = tirx.if_then_else(value > 0, _c(1), tirx.if_then_else(value < 0, _c(-1), _c(0)))
        y = sign * (magnitude * magnitude + _c(c_int))
        return value * (tirx.shift_right(y, _c(n)) + _c(one))

    return te.compute(x.shape, element, name="int_gelu")
