"""The softmax lowering's whole row chain as one CPU kernel (`qcompile.tvm.ScoresSoftmax`):

    d16 = clamp(((x − max_row x)·m + b + r) >> e, lo, hi)       r = 2^(e−1) if e > 0 else 0
    out = Kernel(d16)                                            Kernel = IBertSoftmax or Shiftmax

which is ReduceMax → Sub → Requantize → Cast(int32) → Kernel as `passes/lowering/softmax_rule.py`
emits it (`lowering/fuse.py` rewrites the chain), with m, e, b, lo, hi the Requantize's scalar
constants, compiled in as immediates, and the kernel's own stages (`softmax.ibert_softmax_te`,
`exp_family.shiftmax_te`) reused unchanged on d16. Nothing about the values changes: every stage is the
reference's expression; the gain is where they live. Scheduled as one pass over rows (`schedule_rows`):
the rows are fused and parallel over the cores, and every stage of a row — its max, the grid, e, the
sum, the factor, the output — runs under that row's iteration, so the intermediate rows stay in L1
instead of travelling through memory between three kernels (the unfused chain also ran its ReduceMax
serially, and the requantize unvectorized: 6·257·257 elements are not a multiple of 8). The inner loops
are left serial and plain for LLVM's loop vectorizer.
"""

from __future__ import annotations

__all__ = ["scores_grid_te", "scores_softmax_te", "schedule_rows"]


def scores_grid_te(x, m: int, e: int, b: int, lo: int, hi: int):
    """d16 (int32) of int32 scores x [..., L]: x below its row maximum, requantized onto the grid."""
    from tvm import te

    from qcompile.backends.tvm.kernels.requantize import requantize_expr

    *rows, length = (int(dim) for dim in x.shape)
    k = te.reduce_axis((0, length), "k")
    row_max = te.compute(rows, lambda *r: te.max(x[(*r, k)], axis=k), name="scores_max")
    return te.compute(
        x.shape, lambda *i: requantize_expr(x[i] - row_max[i[:-1]], i, m, e, b, lo, hi, "int32"), name="scores_grid"
    )


def scores_softmax_te(x, m: int, e: int, b: int, lo: int, hi: int, kernel, *args, **kwargs):
    """kernel(d16, *args, **kwargs) on the requantized scores: the fused chain as TE."""
    return kernel(scores_grid_te(x, m, e, b, lo, hi), *args, **kwargs)


def schedule_rows(func):
    """Fuse the output's row loops (all but the last), parallelize them, and compute every other stage
    of the PrimFunc at that loop (in reverse order, so each stage lands before its consumers)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    *stages, out = blocks
    row = sch.fuse(*sch.get_loops(out)[:-1])
    sch.parallel(row)
    for block in reversed(stages):
        sch.compute_at(block, row)
    return sch.mod
