"""`qcompile.ILayerNorm` (with its `IntSqrt`) as TE computes over the last axis, int64 inside.

    μ = ⌊(2·ΣI + C) / 2C⌋,  y = I − μ,  v = Σ (y >> shift)²,  σ = max(isqrt(v), 1) << shift,
    f = ⌊2^61 / σ⌋,  out = (y·f) >> 31                                   (int64, as the reference)

isqrt is the reference's fixed six Newton steps x ← min(x, ⌊(x + ⌊v/x⌋)/2⌋) from x0 = 2^⌈bits(v)/2⌉,
bits(v) = Σ_k [v ≥ 2^k] over k = 0…62, which for v ≥ 0 is the bit length 64 − clz(v); every division is TIR
floordiv, every >> an arithmetic shift —
the reference's `//` and `>>`. `shift` is the calibrated compile-time constant of the ONNX node.
Per-row stages (two reductions, the square root, the factor) are separate TE stages that a row-wise
schedule computes at the row; the output stage is elementwise.
"""

from __future__ import annotations

from qcompile.intops.isqrt import STEPS

__all__ = ["isqrt_expr", "bit_length_expr", "int_sqrt_te", "ilayernorm_te"]


def isqrt_expr(v, bits):
    """⌊√v⌋ for an int64 expression v ≥ 0 with bits = bits(v), as the reference's fixed iteration."""
    from tvm import tirx

    one, two = tirx.const(1, "int64"), tirx.const(2, "int64")
    x = tirx.shift_left(one, tirx.floordiv(bits + one, two))
    for _ in range(STEPS):
        x = tirx.min(x, tirx.floordiv(x + tirx.floordiv(v, tirx.max(x, one)), two))
    return x


def bit_length_expr(v):
    """bits(v) = Σ_k [v ≥ 2^k] (k = 0…62) for int64 v ≥ 0: the bit length, 64 − clz(v) (clz(0) = 64)."""
    from tvm import tirx

    return tirx.const(64, "int64") - tirx.clz(v).astype("int64")


def int_sqrt_te(v):
    """`qcompile.IntSqrt` elementwise: ⌊√v⌋ by the reference's fixed iteration (int64)."""
    from tvm import te

    return te.compute(
        v.shape, lambda *i: isqrt_expr(v[i].astype("int64"), bit_length_expr(v[i].astype("int64"))), name="int_sqrt"
    )


def ilayernorm_te(x, shift: int):
    from tvm import te, tirx

    *rows, channels = (int(d) for d in x.shape)
    one = tirx.const(1, "int64")
    k = te.reduce_axis((0, channels), "k")
    total = te.compute(rows, lambda *r: te.sum(x[(*r, k)].astype("int64"), axis=k), name="ln_sum")
    mean = te.compute(rows, lambda *r: tirx.floordiv(2 * total[r] + channels, 2 * channels), name="ln_mean")
    k2 = te.reduce_axis((0, channels), "k2")

    def centred(r, c):
        return tirx.shift_right(x[(*r, c)].astype("int64") - mean[r], tirx.const(shift, "int64"))

    variance = te.compute(rows, lambda *r: te.sum(centred(r, k2) * centred(r, k2), axis=k2), name="ln_var")
    factor = te.compute(
        rows,
        lambda *r: tirx.floordiv(
            tirx.shift_left(one, tirx.const(61, "int64")),
            tirx.shift_left(
                tirx.max(isqrt_expr(variance[r], bit_length_expr(variance[r])), one), tirx.const(shift, "int64")
            ),
        ),
        name="ln_factor",
    )
    return te.compute(
        x.shape,
        lambda *i: tirx.shift_right((x[i].astype("int64") - mean[i[:-1]]) * factor[i[:-1]], tirx.const(31, "int64")),
        name="ilayernorm",
    )
