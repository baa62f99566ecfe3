"""`qcompile.Requantize` as a TE compute:

    y = clamp((x·m + b + r) >> e, lo, hi),    r = 2^(e−1) if e > 0 else 0

x int32 [..., C]; m, e, b int64 arrays that broadcast against x as in NumPy: scalars (shape ()), per
channel along the last axis ([C]) or along another one ([C, 1, 1]), or Python ints compiled in. The sum is
int64 (the lowering keeps |x·m| + |b| + r < 2^63, `qcompile.intops.requantize`), and `>>` of a signed
int64 is LLVM's `ashr` / CUDA's arithmetic shift: floor division by 2^e, the reference's rounding half
up. Used on its own and as the epilogue fused into the integer GEMM.
"""

from __future__ import annotations

__all__ = ["requantize_expr", "requantize_te", "fold_rounding"]


def _at(param, index):
    """param[index] under NumPy broadcasting: param's dims align with index's last ones; size-1 dims read 0.
    A Python int is a compile-time constant (int64 immediate)."""
    if isinstance(param, int):
        from tvm import tirx

        return tirx.const(param, "int64")
    dims = [int(d) for d in param.shape]
    lead = len(index) - len(dims)
    return param[tuple(0 if size == 1 else index[lead + j] for j, size in enumerate(dims))] if dims else param[()]


def requantize_expr(value, index, m, e, b, lo: int, hi: int, out_dtype: str, rounding_in_b: bool = False):
    """The requantized element for an int32 (or int64) expression `value` at `index` (b=None: no offset).

    rounding_in_b: b already holds b + r (`fold_rounding`), so no per-element shift-and-select computes r;
    m may then also be an int32 array (every multiplier < 2^31), which x86 multiplies in one vpmuldq."""
    from tvm import tirx

    shift = _at(e, index)
    if rounding_in_b or isinstance(e, int):  # folded at build time, or a compile-time shift
        rounding = tirx.const(0 if rounding_in_b or e <= 0 else 1 << (e - 1), "int64")
    else:
        rounding = tirx.if_then_else(
            shift > 0, tirx.shift_left(tirx.const(1, "int64"), shift - 1), tirx.const(0, "int64")
        )
    offset = _at(b, index) if b is not None else tirx.const(0, "int64")
    total = value.astype("int64") * _at(m, index).astype("int64") + offset + rounding
    shifted = tirx.shift_right(total, shift)
    return tirx.max(tirx.min(shifted, tirx.const(hi, "int64")), tirx.const(lo, "int64")).astype(out_dtype)


def requantize_te(x, m, e, b, lo: int, hi: int, out_dtype: str = "int8"):
    """TE tensor of x requantized to `out_dtype` codes in [lo, hi]."""
    from tvm import te

    return te.compute(x.shape, lambda *i: requantize_expr(x[i], i, m, e, b, lo, hi, out_dtype), name="requantize")


def fold_rounding(m, e, b):
    """Build-time (m, e, b + r) for `requantize_expr(..., rounding_in_b=True)`: r = 2^(e−1) (0 when e ≤ 0)
    added to the offset once instead of per element, and m narrowed to int32 when every value fits."""
    import numpy as np

    m, e, b = (np.asarray(v, np.int64) for v in (m, e, b))
    folded = b + np.where(e > 0, np.left_shift(np.int64(1), np.maximum(e - 1, 0)), 0)
    narrow = m.size and m.min() >= -(2**31) and m.max() < 2**31
    return (m.astype(np.int32) if narrow else m), e, folded
