"""`qcompile.Lookup` and `qcompile.IntAdd` as TE computes (elementwise; fused by Relax with neighbours).

    Lookup:  out = table[clamp(x − first, 0, len − 1)]                     (the table's dtype)
    IntAdd:  out = clamp(R(a; m_a, e_a) + R(b; m_b, e_b), lo, hi)          (R = requantize, no clamp)

Same integer semantics as `qcompile.intops.lookup` / `int_linear.int_add`; R is `requantize_expr` with
the int64 range as its clamp, so the only clamp is the final one.
"""

from __future__ import annotations

from qcompile.backends.tvm.kernels.requantize import requantize_expr

__all__ = ["lookup_te", "int_add_te"]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def lookup_te(x, table, first: int):
    from tvm import te, tirx

    last = int(table.shape[0]) - 1

    def element(*i):
        index = tirx.max(
            tirx.min(x[i].astype("int64") - tirx.const(first, "int64"), tirx.const(last, "int64")),
            tirx.const(0, "int64"),
        )
        return table[index]

    return te.compute(x.shape, element, name="lookup")


def int_add_te(a, b, m_a, e_a, m_b, e_b, lo: int, hi: int, out_dtype: str = "int16"):
    from tvm import te, tirx

    def element(*i):
        left = requantize_expr(a[i], i, m_a, e_a, None, INT64_MIN, INT64_MAX, "int64")
        right = requantize_expr(b[i], i, m_b, e_b, None, INT64_MIN, INT64_MAX, "int64")
        return tirx.max(tirx.min(left + right, tirx.const(hi, "int64")), tirx.const(lo, "int64")).astype(out_dtype)

    return te.compute(a.shape, element, name="int_add")
