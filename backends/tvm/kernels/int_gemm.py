"""The integer GEMM of `qcompile.IntLinear` for x86 AVX2 CPUs, exact for every int8/uint8 operand.

    acc[i, n] = Σ_k A[i, k]·W[k, n] + bias[n]            (int32)

Why int16 pairs: AVX2 without VNNI has two integer dot-product instructions. vpmaddubsw (u8×s8, pairs
summed in *saturating* int16) is wrong for full-range operands (2·255·127 > 2^15 − 1: the ONNX Runtime
trap of issue 4). vpmaddwd (s16×s16, pairs summed in int32) is exact for any 8-bit codes: a pair sum is at
most 2·255·128 < 2^17. So A is read as int16 and W is packed at build time as int16

    Wp[n // 8, k // 2, n % 8, k % 2] = W[k, n]             (zero-padded to N % 8 = 0, K % 2 = 0)

so that one 32-byte load holds the 2 k-values × 8 columns a `vpmaddwd` multiplies against a broadcast
pair of A: the tensor intrinsic `qcompile_s16_dot_8x2` (C[0:8] += A[0:2] · Wp[.., .., 0:8, 0:2]).

Schedule: a register tile of `rows` × (8·`col_blocks`) int32 accumulators (the defaults, 6 × 16, keep 12
ymm accumulators live), k innermost in steps of 2, the tile loops fused and parallel over cores, the
accumulator initialized with the bias and written back through the fused epilogue. M is padded to a
multiple of `rows` (and K to a multiple of 2) by a copy of A inside the kernel, which also widens A's
8-bit codes to int16 (M·K elements, small next to the GEMM); rows past M are zeros and are not written out.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = [
    "pack_weight",
    "int_gemm_func",
    "packed_gemm_func",
    "schedule_int_gemm",
    "tile_and_tensorize",
    "register_intrinsic",
    "INTRINSIC",
]

INTRINSIC = "qcompile_s16_dot_8x2"
LANES, PAIR = 8, 2


def pack_weight(weight: np.ndarray) -> np.ndarray:
    """[K, N] int8/uint8 codes → int16 [ceil(N/8), ceil(K/2), 8, 2], zero-padded."""
    k, n = weight.shape
    padded = np.zeros((-(-k // PAIR) * PAIR, -(-n // LANES) * LANES), np.int16)
    padded[:k, :n] = weight
    kp, np_ = padded.shape
    return np.ascontiguousarray(padded.reshape(kp // PAIR, PAIR, np_ // LANES, LANES).transpose(2, 0, 3, 1))


@functools.cache
def register_intrinsic() -> None:
    """Register the `qcompile_s16_dot_8x2` tensor intrinsic with TVM (once per process)."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    def definition(native: bool):
        """The intrinsic's semantics (native=False, what tensorize matches) or its AVX2 body."""

        @T.prim_func(s_tir=True)
        def func(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (2,), "int16", offset_factor=1)
            B = T.match_buffer(b, (8, 2), "int16", offset_factor=1)
            C = T.match_buffer(c, (8,), "int32", offset_factor=1, scope="local")
            with T.sblock("root"):
                T.reads(C[0:8], A[0:2], B[0:8, 0:2])
                T.writes(C[0:8])
                if native:
                    pair = T.reinterpret(
                        T.broadcast(T.reinterpret(A.vload([0], "int16x2"), dtype="int32"), 8), dtype="int16x16"
                    )
                    C[T.ramp(T.int32(0), 1, 8)] += T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                        pair,
                        B.vload([0, 0], dtype="int16x16"),
                        dtype="int32x8",
                    )
                else:
                    for i in T.serial(0, 8):
                        for k in T.serial(0, 2):
                            with T.sblock("update"):
                                vi, vk = T.axis.remap("SR", [i, k])
                                C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

        return func

    desc, impl = definition(False), definition(True)
    TensorIntrin.register(INTRINSIC, desc, impl, override=True)


def int_gemm_func(
    m: int, k: int, n: int, rows: int = 6, epilogue=None, out_dtype: str = "int32", a_dtype: str = "int16"
):
    """PrimFunc main(A a_dtype [m, k], Wp int16 packed, bias int32 [N8], *epilogue params, out [m, n]).

    `epilogue` = (params, f): te placeholders and f(acc_expr, (i, j)) → out expression (e.g. requantize)."""
    from tvm import te, tirx

    k2, n8 = -(-k // PAIR) * PAIR, -(-n // LANES) * LANES
    mp = -(-m // rows) * rows
    a = te.placeholder((m, k), a_dtype, name="A")
    wp = te.placeholder((n8 // LANES, k2 // PAIR, LANES, PAIR), "int16", name="Wp")
    bias = te.placeholder((n8,), "int32", name="bias")
    a_padded = te.compute(
        (mp, k2),
        lambda i, kk: tirx.if_then_else(
            tirx.all(i < m, kk < k), a[tirx.min(i, m - 1), tirx.min(kk, k - 1)].astype("int16"), tirx.const(0, "int16")
        ),
        name="A_padded",
    )
    return packed_gemm_func(a, a_padded, wp, bias, m, n, epilogue, out_dtype)


def packed_gemm_func(a, a_padded, wp, bias, m: int, n: int, epilogue, out_dtype: str):
    """The PrimFunc main(a, wp, bias, *epilogue params, out [m, n]) of the GEMM over a_padded [Mp, Kp]
    (a, or a padded copy of it) and wp packed [Np/lanes, Kp/group, lanes, group]:
    acc = a_padded · W in int32, out = epilogue(acc + bias) (a cast to out_dtype without one)."""
    from tvm import te

    _, groups, lanes, group = (int(d) for d in wp.shape)
    r = te.reduce_axis((0, groups * group), "k")
    acc = te.compute(
        (int(a_padded.shape[0]), int(bias.shape[0])),
        lambda i, j: te.sum(
            a_padded[i, r].astype("int32") * wp[j // lanes, r // group, j % lanes, r % group].astype("int32"), axis=r
        ),
        name="acc",
    )
    params, finish = epilogue if epilogue is not None else ((), lambda value, index: value.astype(out_dtype))
    out = te.compute((m, n), lambda i, j: finish(acc[i, j] + bias[j], (i, j)), name="out")
    return te.create_prim_func([a, wp, bias, *params, out])


def tile_and_tensorize(
    sch,
    block,
    rows: int,
    col_blocks: int,
    panels_outside: bool,
    consumer=None,
    intrinsic: tuple[str, int, int] = (INTRINSIC, LANES, PAIR),
) -> None:
    """The register tile of a GEMM block over loops (*batch, i, j, k): i split by `rows`, j by
    `col_blocks` × lanes, k by the intrinsic's group; accumulators in a local buffer written back per
    tile; `intrinsic` = (name, lanes, group) on the innermost lanes × group (default: vpmaddwd on 8 × 2,
    `int_gemm_vnni` passes vpdpbusd's); batch and tile loops fused and parallel. With
    `panels_outside` the column tiles are the outer loop (a W panel stays in L1 while all rows pass).
    `consumer` (the output/epilogue block) is computed per tile, right after the tile's accumulators
    are final, instead of in a separate serial pass over the whole int32 result."""
    name, lanes, group = intrinsic
    if name == INTRINSIC:
        register_intrinsic()
    local = sch.cache_write(block, 0, "local")
    *batch, i, j, k = sch.get_loops(block)
    columns = int(sch.get(j).extent)
    blocks = col_blocks if (columns // lanes) % col_blocks == 0 else 1
    io, ii = sch.split(i, [None, rows])
    jo, jb, ji = sch.split(j, [None, blocks, lanes])
    ko, ki = sch.split(k, [None, group])
    outer = [jo, io] if panels_outside else [io, jo]
    sch.reorder(*batch, *outer, ko, ii, jb, ji, ki)
    sch.reverse_compute_at(local, outer[-1])
    sch.vectorize(sch.get_loops(local)[-1])
    if consumer is not None:
        sch.reverse_compute_at(consumer, outer[-1])
    sch.parallel(sch.fuse(*batch, *outer) if panels_outside else sch.fuse(*batch, io))
    init = sch.decompose_reduction(block, ko)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(ji, name)
    sch.unroll(ii)
    sch.unroll(jb)


def schedule_int_gemm(func, rows: int = 6, col_blocks: int = 2):
    """Register-tiled, vpmaddwd-tensorized, parallel schedule of `int_gemm_func`'s PrimFunc."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    block = sch.get_sblock("acc")
    pad = sch.get_sblock("A_padded")
    pad_rows, pad_cols = sch.get_loops(pad)
    sch.parallel(pad_rows)
    sch.vectorize(sch.split(pad_cols, [None, 16])[1])
    if int(sch.get(sch.get_loops(block)[0]).extent) % rows:
        raise ValueError(f"schedule rows={rows} must divide the padded M of int_gemm_func (built with another `rows`)")
    tile_and_tensorize(sch, block, rows, col_blocks, panels_outside=True, consumer=sch.get_sblock("out"))
    return sch.mod
