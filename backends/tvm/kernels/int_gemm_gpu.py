"""`qcompile.IntLinear` (+ its requantize epilogue) for CUDA GPUs on `__dp4a`:

    acc[i, n] = Σ_k x8[i, k]·Wt[n, k] + bias'[n],   x8 = x − 128 as int8 when x is uint8,
    bias' = bias + 128·Σ_k W[k, n]                   (exact: Σ (x − 128)·w + 128·Σ w = Σ x·w)

`__dp4a` (sm_61+) multiplies 4 packed int8 pairs and adds them to an int32 exactly (no saturating
intermediate, unlike AVX2's vpmaddubsw). Both operands are made signed so the generated call is the
unambiguous `__dp4a(int, int, int)` (CUDA's mixed-sign overloads take char4/uchar4 vectors, not the
packed words TVM emits). W is transposed and zero-padded at build time to int8 Wt [N64, K16] so both
operands hold 4 consecutive k values; x is shifted and padded inside the kernel. Schedule: 64×64 output tiles per
thread block, 16×16 threads with 4×4 accumulators each in
registers, k staged through shared memory 16 at a time, dp4a on the innermost 4; the epilogue
(bias, requantize, cast) is a separate elementwise stage over the valid [m, n] corner.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["pack_weight_t", "shifted_bias", "dp4a_gemm_func", "schedule_dp4a_gemm", "register_dp4a", "DP4A"]

TILE, THREADS, K_STEP, DOT = 64, 16, 16, 4
DP4A = "qcompile_dp4a_s8s8s32"


@functools.cache
def register_dp4a() -> None:
    """Register the `__dp4a` tensor intrinsic: C[0] += Σ_{t<4} A[t]·B[t], int8 → int32 (once per process).

    Our own instead of tvm.s_tir.tensor_intrin's: importing that package takes about a minute."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    def definition(native: bool):
        @T.prim_func(s_tir=True)
        def func(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (4,), "int8", offset_factor=1, align=4, scope="shared")
            B = T.match_buffer(b, (4,), "int8", offset_factor=1, align=4, scope="shared")
            C = T.match_buffer(c, (1,), "int32", offset_factor=1, align=4, scope="local")
            with T.sblock("root"):
                T.reads(C[0], A[0:4], B[0:4])
                T.writes(C[0])
                if native:
                    C[0] = C[0] + T.call_pure_extern(
                        "__dp4a", A.vload([0], "int8x4"), B.vload([0], "int8x4"), T.int32(0), dtype="int32"
                    )
                else:
                    for t in range(4):
                        with T.sblock("update"):
                            vt = T.axis.remap("R", [t])
                            C[0] = C[0] + T.cast(A[vt], "int32") * T.cast(B[vt], "int32")

        return func

    desc, impl = definition(False), definition(True)
    TensorIntrin.register(DP4A, desc, impl, override=True)


def pack_weight_t(weight: np.ndarray) -> np.ndarray:
    """[K, N] int8 codes → int8 [ceil(N/64)·64, ceil(K/16)·16], transposed, zero-padded."""
    k, n = weight.shape
    packed = np.zeros((-(-n // TILE) * TILE, -(-k // K_STEP) * K_STEP), np.int8)
    packed[:n, :k] = weight.T
    return packed


def shifted_bias(weight: np.ndarray, bias: np.ndarray, x_dtype: str) -> np.ndarray:
    """bias' (int32) for activations of `x_dtype`: + 128·Σ_k W[k, n] when they are shifted from uint8."""
    total = bias.astype(np.int64) + (128 * weight.astype(np.int64).sum(axis=0) if x_dtype == "uint8" else 0)
    if np.abs(total).max(initial=0) >= 2**31:
        raise ValueError("the shifted bias does not fit int32")
    return total.astype(np.int32)


def dp4a_gemm_func(m: int, k: int, n: int, a_dtype: str, epilogue=None, out_dtype: str = "int32"):
    """PrimFunc main(x a_dtype [m, k], Wt int8 packed, bias' int32 [N64], *epilogue params, out [m, n])."""
    from tvm import te, tirx

    mp, kp, np_ = -(-m // TILE) * TILE, -(-k // K_STEP) * K_STEP, -(-n // TILE) * TILE
    x = te.placeholder((m, k), a_dtype, name="x")
    wt = te.placeholder((np_, kp), "int8", name="Wt")
    bias = te.placeholder((np_,), "int32", name="bias")

    def shifted(i, r):
        value = x[tirx.min(i, m - 1), tirx.min(r, k - 1)]
        value = (value.astype("int32") - 128).astype("int8") if a_dtype == "uint8" else value.astype("int8")
        return tirx.if_then_else(tirx.all(i < m, r < k), value, tirx.const(0, "int8"))

    x_padded = te.compute((mp, kp), shifted, name="x_padded")
    r = te.reduce_axis((0, kp), "k")
    acc = te.compute(
        (mp, np_), lambda i, j: te.sum(x_padded[i, r].astype("int32") * wt[j, r].astype("int32"), axis=r), name="acc"
    )
    params, finish = epilogue if epilogue is not None else ((), lambda value, index: value.astype(out_dtype))
    out = te.compute((m, n), lambda i, j: finish(acc[i, j] + bias[j], (i, j)), name="out")
    return te.create_prim_func([x, wt, bias, *params, out])


def schedule_dp4a_gemm(func):
    from tvm import s_tir

    register_dp4a()
    sch = s_tir.Schedule(func)
    pad = sch.get_sblock("x_padded")
    fused = sch.fuse(*sch.get_loops(pad))
    bx, tx = sch.split(fused, [None, 256])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")

    block = sch.get_sblock("acc")
    i, j, k = sch.get_loops(block)
    per = TILE // THREADS
    by, ty, ti = sch.split(i, [None, THREADS, per])
    bx, tx, tj = sch.split(j, [None, THREADS, per])
    ko, kk, kd = sch.split(k, [None, K_STEP // DOT, DOT])
    sch.reorder(by, bx, ty, tx, ko, kk, ti, tj, kd)
    sch.bind(by, "blockIdx.y")
    sch.bind(bx, "blockIdx.x")
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
    local = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(local, tx)
    for index in (0, 1):
        shared = sch.cache_read(block, index, "shared")
        sch.compute_at(shared, ko)
        loops = sch.get_loops(shared)[-2:]
        fused = sch.fuse(*loops)
        _, ty_s, tx_s, vec = sch.split(fused, [None, THREADS, THREADS, DOT])
        sch.bind(ty_s, "threadIdx.y")
        sch.bind(tx_s, "threadIdx.x")
        sch.vectorize(vec)
    sch.decompose_reduction(block, ko)
    sch.tensorize(kd, DP4A)
    sch.unroll(ti)
    sch.unroll(tj)

    out = sch.get_sblock("out")
    fused = sch.fuse(*sch.get_loops(out))
    bx, tx = sch.split(fused, [None, 256])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    return sch.mod
