"""Integer batched matmul of two activations (attention's Q·Kᵀ and P·V) for x86 AVX2 CPUs:

    C[b, i, j] = Σ_k A[b, i, k]·B[b, k, j]          (int32 or int64, the ONNX MatMul's dtype)

The operands are run-time values with bounds |A| ≤ bound_a, |B| ≤ 2^15 − 1 that the integer lowering
proved and recorded on the node. They go through the int16-pair `vpmaddwd` tile of `int_gemm`:

* B is packed per call to int16 [b, N/8, K/2, 8, 2] (B_packed), A widened to int16 rows padded to a
  multiple of `rows` (A_padded); both pads are zeros, which add nothing.
* If bound_a > 2^15 − 1 (softmax probabilities reach 2^16), A is split into limbs A = 2^8·A_hi + A_lo
  with A_hi = A >> 8 and A_lo = A & 255 (exact for either sign), stacked as twice the rows, and the two
  int32 products are recombined as (C_hi << 8) + C_lo in the output dtype.

Each int32 accumulator is exact when K·max|limb|·bound_b < 2^31, which `fits` checks; the converter
falls back to TVM's generic matmul otherwise. Schedule: `int_gemm`'s register tile with the batch and
row tiles fused and parallel over the cores.
"""

from __future__ import annotations

from qcompile.backends.tvm.kernels.int_gemm import LANES, PAIR, tile_and_tensorize

__all__ = ["fits", "int_batch_matmul_func", "schedule_int_batch_matmul"]

INT16_MAX, INT32_MAX = 2**15 - 1, 2**31 - 1
LIMB_BITS = 8


def _limbs(bound_a: int) -> bool:
    return bound_a > INT16_MAX


def fits(k: int, bound_a: int, bound_b: int) -> bool:
    """Whether the int16-pair kernel is exact for these bounds."""
    if bound_b > INT16_MAX:
        return False
    high = (bound_a >> LIMB_BITS) + 1 if _limbs(bound_a) else bound_a
    if high > INT16_MAX:
        return False
    widest = max(high, (1 << LIMB_BITS) - 1) if _limbs(bound_a) else high
    return -(-k // PAIR) * PAIR * widest * bound_b <= INT32_MAX


def int_batch_matmul_func(batch: int, m: int, k: int, n: int, dtype: str, bound_a: int, rows: int = 6):
    """PrimFunc main(A [batch, m, k], B [batch, k, n], C [batch, m, n]), all of `dtype`."""
    from tvm import te, tirx

    split = _limbs(bound_a)
    k2, n8 = -(-k // PAIR) * PAIR, -(-n // LANES) * LANES
    mp = -(-m // rows) * rows
    stacked = 2 * mp if split else mp
    a = te.placeholder((batch, m, k), dtype, name="A")
    b = te.placeholder((batch, k, n), dtype, name="B")
    zero = tirx.const(0, "int16")

    def a_value(g, i, r):
        row = tirx.min(i % mp, m - 1) if split else tirx.min(i, m - 1)
        value = a[g, row, tirx.min(r, k - 1)]
        if split:
            shift = tirx.const(LIMB_BITS, dtype)
            value = tirx.if_then_else(i < mp, tirx.shift_right(value, shift), tirx.bitwise_and(value, tirx.const((1 << LIMB_BITS) - 1, dtype)))
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
        lambda g, i, j: te.sum(a_padded[g, i, r].astype("int32") * b_packed[g, j // LANES, r // PAIR, j % LANES, r % PAIR].astype("int32"), axis=r),
        name="acc",
    )
    if split:
        out = te.compute(
            (batch, m, n),
            lambda g, i, j: tirx.shift_left(acc[g, i, j].astype(dtype), tirx.const(LIMB_BITS, dtype)) + acc[g, mp + i, j].astype(dtype),
            name="out",
        )
    else:
        out = te.compute((batch, m, n), lambda g, i, j: acc[g, i, j].astype(dtype), name="out")
    return te.create_prim_func([a, b, out])


def schedule_int_batch_matmul(func, rows: int = 6, col_blocks: int = 2):
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    for name in ("A_padded", "B_packed"):
        loops = sch.get_loops(sch.get_sblock(name))
        sch.parallel(sch.fuse(loops[0], loops[1]))
    tile_and_tensorize(sch, sch.get_sblock("acc"), rows, col_blocks, panels_outside=False)
    out = sch.get_sblock("out")
    g, i, j = sch.get_loops(out)
    sch.parallel(sch.fuse(g, i))
    return sch.mod
