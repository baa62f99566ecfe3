"""Integer batched matmul of two activations (attention's Q·Kᵀ and P·V) for x86 AVX2 CPUs:

    C[b, i, j] = Σ_k A[b, i, k]·B[b, k, j]          (int32 or int64, the ONNX MatMul's dtype)

The operands may arrive as narrow codes with zero points, (A − zp_a)·(B − zp_b), centred while they
are packed (the attention transposes then move bytes, not int32). Their centred values have ranges
the integer lowering proved and recorded on the node:
A in [lo_a, hi_a], |B| ≤ bound_b ≤ 2^15 − 1, optionally Σ_k |A[b, i, k]| ≤ row_sum_a. They go through
the int16-pair `vpmaddwd` tile of `int_gemm` (B packed per call to int16 [b, N/8, K/2, 8, 2], A widened
to int16 rows padded to a multiple of `rows`; pads are zeros, which add nothing). `plan` picks how A
becomes int16, cheapest first:

* plain: A already fits int16.
* offset: hi_a − lo_a ≤ 2^16 − 1. With o = lo_a + 2^15, A − o fits int16 and
      C = Σ_k (A − o)·B + o·Σ_k B[b, k, j]
  (the column sums are O(K·N) per batch, next to the O(M·K·N) product). Softmax probabilities in
  [0, 2^15] (Shiftmax) take this path.
* offset with one hot entry: hi_a − lo_a = 2^16 exactly (IBertSoftmax's [0, 2^16]). The single value
  hi_a = o + 2^15 does not fit; it is clipped to o + 2^15 − 1 and corrected by adding B[b, k*, j] for
  the entry k* that held it. One correction per row suffices when row_sum_a < 2·|hi_a| (two such
  entries would already exceed the row sum): softmax rows sum to at most their top code, so a row that
  reaches 2^16 has no other nonzero entry. hot[b, i] = the largest such k, or −1.
* limbs: otherwise, if |A| ≤ bound_a with bound_a >> 8 < 2^15: A = 2^8·A_hi + A_lo (A_hi = A >> 8,
  A_lo = A & 255, exact for either sign) stacked as twice the rows, recombined as (C_hi << 8) + C_lo.
  Twice the multiply-adds: what the offset paths avoid for P·V.

The int32 accumulators are exact when K·max|A'|·bound_b < 2^31 (A' the int16 operand, ≤ 2^15 after the
offset); the corrections and the recombination are computed in int64 and cast to the output dtype, which
holds the true product by the lowering's own bound. `plan` returns None when no path is exact, and the
converter falls back to TVM's generic matmul. Schedule: `int_gemm`'s register tile with the batch and
row tiles fused and parallel over the cores.
"""

from __future__ import annotations

import dataclasses

from qcompile.backends.tvm.kernels.int_gemm import LANES, PAIR, tile_and_tensorize

__all__ = ["Plan", "plan", "fits", "int_batch_matmul_func", "schedule_int_batch_matmul"]

INT16_MIN, INT16_MAX, INT32_MAX = -(2**15), 2**15 - 1, 2**31 - 1
LIMB_BITS = 8


@dataclasses.dataclass(frozen=True)
class Plan:
    """How A becomes the int16 operand: mode 'plain', 'offset' (A − offset, `hot` if one entry per row
    may sit at offset + 2^15) or 'limbs'."""

    mode: str
    offset: int = 0
    hot: bool = False


def _accumulates(k: int, widest: int, bound_b: int) -> bool:
    return -(-k // PAIR) * PAIR * widest * bound_b <= INT32_MAX


def plan(k: int, bound_b: int, lo_a: int, hi_a: int, row_sum_a: int | None = None) -> Plan | None:
    """The cheapest exact way to run A [.., k] in [lo_a, hi_a] against |B| ≤ bound_b, or None."""
    if bound_b > INT16_MAX or lo_a > hi_a:
        return None
    if INT16_MIN <= lo_a and hi_a <= INT16_MAX:
        return Plan("plain") if _accumulates(k, max(-lo_a, hi_a), bound_b) else None
    offset = lo_a - INT16_MIN
    if _accumulates(k, 2**15, bound_b):
        if hi_a - offset <= INT16_MAX:
            return Plan("offset", offset)
        if hi_a - offset == INT16_MAX + 1 and row_sum_a is not None and 0 <= row_sum_a < 2 * abs(hi_a):
            return Plan("offset", offset, hot=True)
    bound_a = max(-lo_a, hi_a)
    high = (bound_a >> LIMB_BITS) + 1
    if high <= INT16_MAX and _accumulates(k, max(high, (1 << LIMB_BITS) - 1), bound_b):
        return Plan("limbs")
    return None


def fits(k: int, bound_a: int, bound_b: int) -> bool:
    """Whether some int16-pair path is exact for |A| ≤ bound_a, |B| ≤ bound_b."""
    return plan(k, bound_b, -bound_a, bound_a) is not None


def int_batch_matmul_func(
    batch: int,
    m: int,
    k: int,
    n: int,
    dtype: str,
    how: Plan,
    rows: int = 6,
    a_dtype: str | None = None,
    b_dtype: str | None = None,
    zp_a: int = 0,
    zp_b: int = 0,
):
    """PrimFunc main(A [batch, m, k], B [batch, k, n], C [batch, m, n]) computing (A − zp_a)·(B − zp_b) in
    `dtype`; A and B are of a_dtype/b_dtype (default `dtype`): narrow codes are centred while packing.
    The plan's ranges are those of the centred operands."""
    from tvm import te, tirx

    split = how.mode == "limbs"
    k2, n8 = -(-k // PAIR) * PAIR, -(-n // LANES) * LANES
    mp = -(-m // rows) * rows
    stacked = 2 * mp if split else mp
    raw_a = te.placeholder((batch, m, k), a_dtype or dtype, name="A")
    raw_b = te.placeholder((batch, k, n), b_dtype or dtype, name="B")
    a = _Centred(raw_a, zp_a, dtype)
    b = _Centred(raw_b, zp_b, dtype)
    zero = tirx.const(0, "int16")
    wide = lambda value: value.astype("int64")  # noqa: E731

    def a_value(g, i, r):
        row = tirx.min(i % mp, m - 1) if split else tirx.min(i, m - 1)
        value = a[g, row, tirx.min(r, k - 1)]
        if split:
            shift = tirx.const(LIMB_BITS, dtype)
            value = tirx.if_then_else(
                i < mp, tirx.shift_right(value, shift), tirx.bitwise_and(value, tirx.const((1 << LIMB_BITS) - 1, dtype))
            )
        elif how.mode == "offset":
            value = tirx.min(wide(value) - tirx.const(how.offset, "int64"), tirx.const(INT16_MAX, "int64"))
        valid = tirx.all((i % mp if split else i) < m, r < k)
        return tirx.if_then_else(valid, value.astype("int16"), zero)

    a_padded = te.compute((batch, stacked, k2), a_value, name="A_padded")
    b_packed = te.compute(
        (batch, n8 // LANES, k2 // PAIR, LANES, PAIR),
        lambda g, jo, ko, ji, ki: tirx.if_then_else(
            tirx.all(ko * PAIR + ki < k, jo * LANES + ji < n),
            b[g, tirx.min(ko * PAIR + ki, k - 1), tirx.min(jo * LANES + ji, n - 1)].astype("int16"),
            zero,
        ),
        name="B_packed",
    )
    r = te.reduce_axis((0, k2), "k")
    acc = te.compute(
        (batch, stacked, n8),
        lambda g, i, j: te.sum(
            a_padded[g, i, r].astype("int32") * b_packed[g, j // LANES, r // PAIR, j % LANES, r % PAIR].astype("int32"),
            axis=r,
        ),
        name="acc",
    )
    if split:
        out = te.compute(
            (batch, m, n),
            lambda g, i, j: ((wide(acc[g, i, j]) << LIMB_BITS) + wide(acc[g, mp + i, j])).astype(dtype),
            name="out",
        )
        return te.create_prim_func([raw_a, raw_b, out])
    if how.mode == "plain":
        return te.create_prim_func(
            [raw_a, raw_b, te.compute((batch, m, n), lambda g, i, j: acc[g, i, j].astype(dtype), name="out")]
        )
    kc = te.reduce_axis((0, k), "kc")
    colsum = te.compute((batch, n), lambda g, j: te.sum(wide(b[g, kc, j]), axis=kc), name="colsum")
    hot = None
    if how.hot:
        kh = te.reduce_axis((0, k), "kh")
        top = tirx.const(how.offset + INT16_MAX, "int64")
        hot = te.compute(
            (batch, m), lambda g, i: te.max(tirx.if_then_else(wide(a[g, i, kh]) > top, kh, -1), axis=kh), name="hot"
        )

    def total(g, i, j):
        value = wide(acc[g, i, j]) + tirx.const(how.offset, "int64") * colsum[g, j]
        if hot is not None:
            value = value + tirx.if_then_else(
                hot[g, i] >= 0, wide(b[g, tirx.max(hot[g, i], 0), j]), tirx.const(0, "int64")
            )
        return value.astype(dtype)

    return te.create_prim_func([raw_a, raw_b, te.compute((batch, m, n), total, name="out")])


class _Centred:
    """x[index] read as (x − zp) in `dtype` (the identity when x is already `dtype` with zp = 0)."""

    def __init__(self, tensor, zp: int, dtype: str):
        self.tensor, self.zp, self.dtype = tensor, zp, dtype

    def __getitem__(self, index):
        from tvm import tirx

        value = self.tensor[index]
        value = value if str(value.dtype) == self.dtype else value.astype(self.dtype)
        return value - tirx.const(self.zp, self.dtype) if self.zp else value


def schedule_int_batch_matmul(func, rows: int = 6, col_blocks: int = 2):
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    present = {sch.get(block).name_hint for block in sch.get_child_blocks(sch.get_sblock("root"))}
    for name in ("A_padded", "B_packed", "colsum", "hot"):
        if name not in present:
            continue
        loops = sch.get_loops(sch.get_sblock(name))
        sch.parallel(sch.fuse(loops[0], loops[1]))
    tile_and_tensorize(sch, sch.get_sblock("acc"), rows, col_blocks, panels_outside=False)
    out = sch.get_sblock("out")
    g, i, j = sch.get_loops(out)
    sch.parallel(sch.fuse(g, i))
    return sch.mod
