"""The integer GEMM of `qcompile.IntLinear` for x86 CPUs with VNNI (AVX512-VNNI or AVX-VNNI), exact.

    acc[i, n] = Σ_k A[i, k]·W[k, n] + bias[n]            (int32)

`vpdpbusd` multiplies 4 unsigned bytes of A by 4 signed bytes of W and adds the four products to an
int32 lane, without the int16 saturation of AVX2's vpmaddubsw (each product |u8·s8| ≤ 255·128 fits;
the sum is int32). So it is exact for uint8 activations × int8 weights whenever the int32 accumulator
is — the condition the integer lowering already guarantees for the int32 IntLinear. Activations that
are int8 codes are shifted into uint8 while A is padded, with the shift folded into the bias:

    Σ_k A·W = Σ_k (A + 128)·W − 128·Σ_k W[k, n]           (`shifted_bias`)

W is packed at build time so that one vector load holds the 4 k-values × `lanes` columns one
instruction multiplies against a broadcast group of 4 bytes of A:

    Wp[n // lanes, k // 4, n % lanes, k % 4] = W[k, n]     (int8, zero-padded)

`lanes` is 16 with AVX512-VNNI (zmm, 64 multiply-adds an instruction) and 8 with AVX-VNNI (ymm, 32).
Tensor intrinsics `qcompile_u8s8_dot_16x4` / `_8x4`: C[0:lanes] += Σ_{t<4} A[t]·Wp[.., .., 0:lanes, t].
Schedule: `int_gemm.tile_and_tensorize` (register tile rows × col_blocks·lanes, column panels outside,
parallel, epilogue per tile) with this intrinsic.
"""

from __future__ import annotations

import functools

import numpy as np

from qcompile.backends.tvm.kernels.int_gemm import packed_gemm_func, tile_and_tensorize

__all__ = ["vnni_lanes", "pack_weight", "shifted_bias", "vnni_gemm_func", "schedule_vnni_gemm", "GROUP", "TILES"]

GROUP = 4
# register tiles (rows, col_blocks) per lane count: 24 zmm accumulators of 32, 12 ymm of 16
# (benchmarks/tvm_gemm.py compares them)
TILES = {16: (4, 6), 8: (6, 2)}
_LLVM = {16: "llvm.x86.avx512.vpdpbusd.512", 8: "llvm.x86.avx512.vpdpbusd.256"}


def vnni_lanes(features) -> int | None:
    """int32 lanes of the widest vpdpbusd the CPU features allow: 16 (AVX512-VNNI), 8 (AVX-VNNI), None."""
    if {"avx512vnni", "avx512bw"} <= set(features):
        return 16
    return 8 if "avxvnni" in features else None


def intrinsic_name(lanes: int) -> str:
    return f"qcompile_u8s8_dot_{lanes}x{GROUP}"


@functools.cache
def register_intrinsic(lanes: int) -> str:
    """Register the vpdpbusd tensor intrinsic for `lanes` int32 lanes (once per process); its name."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    name, width = intrinsic_name(lanes), lanes * GROUP

    def definition(native: bool):
        """The intrinsic's semantics (native=False, what tensorize matches) or its vpdpbusd body."""

        @T.prim_func(s_tir=True)
        def func(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (GROUP,), "uint8", offset_factor=1)
            B = T.match_buffer(b, (lanes, GROUP), "int8", offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope="local")
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:GROUP], B[0:lanes, 0:GROUP])
                T.writes(C[0:lanes])
                if native:
                    group = T.reinterpret(
                        T.broadcast(T.reinterpret(A.vload([0], f"uint8x{GROUP}"), dtype="int32"), lanes),
                        dtype=f"int8x{width}",
                    )
                    C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id(_LLVM[lanes]),
                        C.vload([0], f"int32x{lanes}"),
                        group,
                        B.vload([0, 0], f"int8x{width}"),
                        dtype=f"int32x{lanes}",
                    )
                else:
                    for i in T.serial(0, lanes):
                        for k in T.serial(0, GROUP):
                            with T.sblock("update"):
                                vi, vk = T.axis.remap("SR", [i, k])
                                C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

        return func

    TensorIntrin.register(name, definition(False), definition(True), override=True)
    return name


def pack_weight(weight: np.ndarray, lanes: int) -> np.ndarray:
    """[K, N] int8 codes → int8 [ceil(N/lanes), ceil(K/4), lanes, 4], zero-padded."""
    k, n = weight.shape
    if weight.size and (weight.min() < -128 or weight.max() > 127):
        raise ValueError("vpdpbusd needs int8 weight codes")
    padded = np.zeros((-(-k // GROUP) * GROUP, -(-n // lanes) * lanes), np.int8)
    padded[:k, :n] = weight
    kp, np_ = padded.shape
    return np.ascontiguousarray(padded.reshape(kp // GROUP, GROUP, np_ // lanes, lanes).transpose(2, 0, 3, 1))


def shifted_bias(weight: np.ndarray, bias: np.ndarray, a_dtype: str) -> np.ndarray:
    """bias' (int32) for activations of `a_dtype`: − 128·Σ_k W[k, n] when int8 codes are shifted to uint8."""
    total = bias.astype(np.int64) - (128 * weight.astype(np.int64).sum(axis=0) if a_dtype == "int8" else 0)
    if np.abs(total).max(initial=0) >= 2**31:
        raise ValueError("the shifted bias does not fit int32")
    return total.astype(np.int32)


def vnni_gemm_func(
    m: int,
    k: int,
    n: int,
    lanes: int,
    rows: int | None = None,
    epilogue=None,
    out_dtype: str = "int32",
    a_dtype: str = "uint8",
):
    """PrimFunc main(A a_dtype [m, k], Wp int8 packed, bias' int32 [N padded], *epilogue params, out [m, n]).

    a_dtype uint8 or int8 (shifted by 128 here; the caller passes `shifted_bias`). `epilogue` = (params,
    f) as for `int_gemm.int_gemm_func`."""
    from tvm import te, tirx

    if a_dtype not in ("uint8", "int8"):
        raise ValueError(f"vpdpbusd needs 8-bit activation codes, got {a_dtype}")
    rows = rows or TILES[lanes][0]
    k4, np_ = -(-k // GROUP) * GROUP, -(-n // lanes) * lanes
    mp = -(-m // rows) * rows
    a = te.placeholder((m, k), a_dtype, name="A")
    wp = te.placeholder((np_ // lanes, k4 // GROUP, lanes, GROUP), "int8", name="Wp")
    bias = te.placeholder((np_,), "int32", name="bias")

    def unsigned(i, kk):
        value = a[tirx.min(i, m - 1), tirx.min(kk, k - 1)]
        value = (value.astype("int32") + 128).astype("uint8") if a_dtype == "int8" else value
        return tirx.if_then_else(tirx.all(i < m, kk < k), value, tirx.const(0, "uint8"))

    # A is read in place when it needs neither padding nor the shift
    a_padded = a if (mp, k4) == (m, k) and a_dtype == "uint8" else te.compute((mp, k4), unsigned, name="A_padded")
    return packed_gemm_func(a, a_padded, wp, bias, m, n, epilogue, out_dtype)


def schedule_vnni_gemm(func, lanes: int, rows: int | None = None, col_blocks: int | None = None):
    """Register-tiled, vpdpbusd-tensorized, parallel schedule of `vnni_gemm_func`'s PrimFunc."""
    from tvm import s_tir

    rows, col_blocks = rows or TILES[lanes][0], col_blocks or TILES[lanes][1]
    name = register_intrinsic(lanes)
    sch = s_tir.Schedule(func)
    block = sch.get_sblock("acc")
    if int(sch.get(sch.get_loops(block)[0]).extent) % rows:
        raise ValueError(f"schedule rows={rows} must divide the padded M of vnni_gemm_func (built with another `rows`)")
    present = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}
    if "A_padded" in present:
        pad_rows, pad_cols = sch.get_loops(sch.get_sblock("A_padded"))
        sch.parallel(pad_rows)
        sch.vectorize(sch.split(pad_cols, [None, 16])[1])
    tile_and_tensorize(
        sch,
        block,
        rows,
        col_blocks,
        panels_outside=True,
        consumer=sch.get_sblock("out"),
        intrinsic=(name, lanes, GROUP),
    )
    return sch.mod
