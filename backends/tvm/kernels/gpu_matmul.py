"""The decoder's matmuls for CUDA GPUs: 4- and 8-bit packed weights with int8 activations on `__dp4a`, 4-bit weights
with float activations, and the float LM head GEMV. One thread per output column and tile of `ROWS` rows (columns
fastest, so a warp reads 32 consecutive weight words: coalesced), the k loop in the thread; `bind=False` builds the
same kernel with serial loops and the dot product written out, to run on a CPU (`decoder.gpu_kernels`).

Packing (`pack_weight`): a column's codes as int32 words, k-major, [K/8, Np] for 4-bit codes (byte t of word k8:
q[8·k8 + t] in the low nibble, q[8·k8 + 4 + t] in the high one) and [K/4, Np] for 8-bit codes (byte t: q[4·k4 + t]
− 128, signed). In the thread, `word & 0x0F0F0F0F` and `(word >> 4) & 0x0F0F0F0F` are the two int8×4 operands of
four k-values each, unpacked in registers, never in memory:

    acc   = Σ_k q·a      = __dp4a(lo, a[8k8 : 8k8+4], __dp4a(hi, a[8k8+4 : 8k8+8], acc))        (8-bit: + 128·Σa)
    Σ_g a = __dp4a(0x01010101, a words)                                                      (exact int32)
    out[i, n] = s_a[i] · Σ_g s[g, n] · (acc − z[g, n]·Σ_g a − z_a[i]·W_g[n])        `int4_matmul`'s algebra

Both operands of `__dp4a(int, int, int)` are signed int8×4: a code in [0, 15] is a non-negative int8, an 8-bit code
is shifted into int8 (exact: Σ(q − 128)·a + 128·Σa = Σq·a). The float epilogue is `int4_matmul_reference`'s
operation order (s·float(acc) added in group order, times s_a), the products rounded on their own on the GPU
(`fence.round_float_products`): bit for bit the reference.
"""

from __future__ import annotations

import numpy as np

from qcompile.backends.tvm.kernels.gpu_grid import grid, thread_scope
from qcompile.backends.tvm.kernels.int4_matmul import padded_columns

__all__ = [
    "COLUMNS",
    "ROWS",
    "pack_weight",
    "int4_matmul_func",
    "int4_float_matmul_func",
    "gemv_func",
    "pack_gemv_weight",
]

COLUMNS = 64  # N is padded to a multiple (`padded_columns(n, COLUMNS)`), as the group parameters are
ROWS = 4  # rows a thread computes for its column: the weight word is unpacked once for all of them
LOW_NIBBLES, ONES = 0x0F0F0F0F, 0x01010101


def pack_weight(q: np.ndarray, bits: int = 4) -> np.ndarray:
    """[K, N] codes (4-bit in [0, 15], 8-bit in [0, 255]) → int32 words [K/8 or K/4, `padded_columns(N, COLUMNS)`]
    (module docstring), padding columns zero."""
    k, n = q.shape
    step = {4: 8, 8: 4}.get(bits)
    if step is None:
        raise ValueError(f"weight codes have 4 or 8 bits, not {bits}")
    if k % step:
        raise ValueError(f"K = {k} must be a multiple of {step} to pack {bits}-bit weights")
    if q.size and (q.min() < 0 or q.max() > 2**bits - 1):
        raise ValueError(f"{bits}-bit weight codes must lie in [0, {2**bits - 1}]")
    np_ = padded_columns(n, COLUMNS)
    padded = np.zeros((k, np_), np.int32)
    padded[:, :n] = q
    if bits == 8:
        data = (padded - 128).astype(np.int8).reshape(k // 4, 4, np_)  # [k4, t, n]
    else:
        halves = padded.reshape(k // 8, 2, 4, np_)
        data = (halves[:, 0] | (halves[:, 1] << 4)).astype(np.uint8)  # [k8, t, n]
    return np.ascontiguousarray(data.transpose(0, 2, 1)).view(np.int32)[..., 0]


def _dot4(bind: bool):
    """dot(word, a, i, k, acc): acc + Σ_{t<4} int8 byte t of word · a[i, k + t] (`__dp4a` on the GPU)."""
    from tvm.script import tirx as T

    def byte(word, t):
        """Byte t of word, sign-extended (a Python int: folded here)."""
        if isinstance(word, int):
            return T.int32(((word >> 8 * t) & 255) - (256 if (word >> 8 * t) & 128 else 0))
        return T.Cast("int32", T.Cast("int8", T.shift_right(word, 8 * t)))

    def dot(word, a, i, k, acc):
        if bind:
            return T.call_pure_extern(
                "int32", "__dp4a", T.int32(word) if isinstance(word, int) else word, a.vload([i, k], "int8x4"), acc
            )
        total = acc
        for t in range(4):
            total = total + byte(word, t) * T.Cast("int32", a[i, k + t])
        return total

    return dot


def int4_matmul_func(
    m: int,
    k: int,
    n: int,
    group: int,
    flavour: str = "cuda",
    act_zero: bool = False,
    bits: int = 4,
    panel: int = 1,
    bind: bool = True,
):
    """main(a i8 [m, k], w i32 words, scale f32 [G, Np], zero i32 [G, Np], [W_g i32 [G, Np],] s_a f32 [m],
    [z_a i32 [m],] out f32 [m, Np]) with `int4_matmul.int4_matmul_func`'s signature (flavour and panel are the
    CPU's, ignored)."""
    from tvm.script import tirx as T

    step = {4: 8, 8: 4}[bits]
    if k % group or group % step:
        raise ValueError(f"K = {k} and the group {group} must be multiples of {step} (and K of the group)")
    np_, groups, rows = padded_columns(n, COLUMNS), k // group, min(ROWS, m)
    tiles, scope, dot = -(-m // rows), thread_scope(bind), _dot4(bind)
    threads = grid(tiles * np_, bind)

    @T.macro
    def columns(ma, mw, mscale, mzero, msums, msa, mza, mout, col, tile):
        accf = T.alloc_buffer((rows,), "float32", scope=scope)
        acc = T.alloc_buffer((rows,), "int32", scope=scope)
        total = T.alloc_buffer((rows,), "int32", scope=scope)
        word = T.alloc_buffer((2,), "int32", scope=scope)
        for r in T.unroll(rows):
            accf[r] = T.float32(0)
        for g in range(groups):
            for r in T.unroll(rows):
                acc[r] = 0
                total[r] = 0
            for s in range(group // step):
                if bits == 4:
                    word[0] = T.bitwise_and(mw[g * (group // step) + s, col], LOW_NIBBLES)
                    word[1] = T.bitwise_and(T.shift_right(mw[g * (group // step) + s, col], 4), LOW_NIBBLES)
                    for r in T.unroll(rows):
                        acc[r] = dot(word[0], ma, T.min(tile * rows + r, m - 1), (g * (group // step) + s) * 8, acc[r])
                        acc[r] = dot(
                            word[1], ma, T.min(tile * rows + r, m - 1), (g * (group // step) + s) * 8 + 4, acc[r]
                        )
                        total[r] = dot(ONES, ma, T.min(tile * rows + r, m - 1), (g * (group // step) + s) * 8, total[r])
                        total[r] = dot(
                            ONES, ma, T.min(tile * rows + r, m - 1), (g * (group // step) + s) * 8 + 4, total[r]
                        )
                else:
                    for r in T.unroll(rows):
                        acc[r] = dot(
                            mw[g * (group // step) + s, col],
                            ma,
                            T.min(tile * rows + r, m - 1),
                            (g * (group // step) + s) * 4,
                            acc[r],
                        )
                        total[r] = dot(ONES, ma, T.min(tile * rows + r, m - 1), (g * (group // step) + s) * 4, total[r])
            for r in T.unroll(rows):
                if bits == 8:
                    acc[r] = acc[r] + 128 * total[r]
                if act_zero:
                    acc[r] = acc[r] - mzero[g, col] * total[r] - mza[T.min(tile * rows + r, m - 1)] * msums[g, col]
                else:
                    acc[r] = acc[r] - mzero[g, col] * total[r]
                accf[r] = accf[r] + mscale[g, col] * T.Cast("float32", acc[r])
        for r in T.unroll(rows):
            if tile * rows + r < m:
                mout[tile * rows + r, col] = accf[r] * msa[tile * rows + r]

    words = k // step
    if act_zero:

        @T.prim_func(s_tir=True)
        def asymmetric(
            a: T.Buffer((m, k), "int8"),
            w: T.Buffer((words, np_), "int32"),
            scale: T.Buffer((groups, np_), "float32"),
            zero: T.Buffer((groups, np_), "int32"),
            sums: T.Buffer((groups, np_), "int32"),
            sa: T.Buffer((m,), "float32"),
            za: T.Buffer((m,), "int32"),
            out: T.Buffer((m, np_), "float32"),
        ):
            T.func_attr({"global_symbol": "main", "tir.noalias": True})
            for bx in threads.blocks:
                for tx in threads.threads:
                    if threads.valid(bx, tx):
                        columns(
                            a,
                            w,
                            scale,
                            zero,
                            sums,
                            sa,
                            za,
                            out,
                            threads.index(bx, tx) % np_,
                            threads.index(bx, tx) // np_,
                        )

        return asymmetric

    @T.prim_func(s_tir=True)
    def func(
        a: T.Buffer((m, k), "int8"),
        w: T.Buffer((words, np_), "int32"),
        scale: T.Buffer((groups, np_), "float32"),
        zero: T.Buffer((groups, np_), "int32"),
        sa: T.Buffer((m,), "float32"),
        out: T.Buffer((m, np_), "float32"),
    ):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        for bx in threads.blocks:
            for tx in threads.threads:
                if threads.valid(bx, tx):
                    columns(
                        a,
                        w,
                        scale,
                        zero,
                        None,
                        sa,
                        None,
                        out,
                        threads.index(bx, tx) % np_,
                        threads.index(bx, tx) // np_,
                    )

    return func


def int4_float_matmul_func(
    m: int, k: int, n: int, group: int, flavour: str = "cuda", panel: int = 1, bind: bool = True
):
    """main(x f32 [m, k], w i32 words [K/8, Np], scale f32 [G, Np], zero f32 [G, Np], y f32 [m, Np]):
    y = Σ_g s·(Σ_{k∈g} q·x − z·Σ_{k∈g} x), `int4_float_matmul`'s algebra (a float kernel: within float32 rounding
    of x·W, not bit for bit the CPU's order)."""
    from tvm.script import tirx as T

    if k % group or group % 8:
        raise ValueError(f"K = {k} and the group {group} must be multiples of 8 (and K of the group)")
    np_, groups, rows = padded_columns(n, COLUMNS), k // group, min(ROWS, m)
    tiles, scope = -(-m // rows), thread_scope(bind)
    threads = grid(tiles * np_, bind)

    @T.prim_func(s_tir=True)
    def func(
        x: T.Buffer((m, k), "float32"),
        w: T.Buffer((k // 8, np_), "int32"),
        scale: T.Buffer((groups, np_), "float32"),
        zero: T.Buffer((groups, np_), "float32"),
        y: T.Buffer((m, np_), "float32"),
    ):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        for bx in threads.blocks:
            for tx in threads.threads:
                if threads.valid(bx, tx):
                    accf = T.alloc_buffer((rows,), "float32", scope=scope)
                    acc = T.alloc_buffer((rows,), "float32", scope=scope)
                    total = T.alloc_buffer((rows,), "float32", scope=scope)
                    for r in T.unroll(rows):
                        accf[r] = T.float32(0)
                    for g in range(groups):
                        for r in T.unroll(rows):
                            acc[r] = T.float32(0)
                            total[r] = T.float32(0)
                        for s in range(group // 8):
                            for t in T.unroll(8):
                                for r in T.unroll(rows):
                                    acc[r] = (
                                        acc[r]
                                        + T.Cast(
                                            "float32",
                                            T.bitwise_and(
                                                T.shift_right(
                                                    w[g * (group // 8) + s, threads.index(bx, tx) % np_],
                                                    8 * (t % 4) + 4 * (t // 4),
                                                ),
                                                15,
                                            ),
                                        )
                                        * x[
                                            T.min(threads.index(bx, tx) // np_ * rows + r, m - 1),
                                            (g * (group // 8) + s) * 8 + t,
                                        ]
                                    )
                                    total[r] = (
                                        total[r]
                                        + x[
                                            T.min(threads.index(bx, tx) // np_ * rows + r, m - 1),
                                            (g * (group // 8) + s) * 8 + t,
                                        ]
                                    )
                        for r in T.unroll(rows):
                            accf[r] = accf[r] + scale[g, threads.index(bx, tx) % np_] * (
                                acc[r] - zero[g, threads.index(bx, tx) % np_] * total[r]
                            )
                    for r in T.unroll(rows):
                        if threads.index(bx, tx) // np_ * rows + r < m:
                            y[threads.index(bx, tx) // np_ * rows + r, threads.index(bx, tx) % np_] = accf[r]

    return func


def pack_gemv_weight(weight: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """[K, N] → [K, Np] of `dtype` (Np = `decoder.kernels.gemv_columns`, columns zero-padded): row-major, so the
    threads of consecutive columns read consecutive elements."""
    from qcompile.backends.tvm.decoder.kernels import gemv_columns

    k, n = weight.shape
    padded = np.zeros((k, gemv_columns(n)), dtype)
    padded[:, :n] = weight
    return padded


def gemv_func(k: int, n: int, dtype: str = "float32", bind: bool = True):
    """main(x f32 [1, k], w [K, Np] of `dtype`, [scale f32 [Np],] y f32 [1, Np]) as `decoder.kernels.gemv_func`: one
    thread per column, float16 and int8 weights widened to float32 in registers, int8 sums times their column's
    scale."""
    from tvm.script import tirx as T

    from qcompile.backends.tvm.decoder.kernels import gemv_columns

    if dtype not in ("float32", "float16", "int8"):
        raise ValueError(f"the GEMV weight is float32, float16 or int8, not {dtype}")
    np_, scope = gemv_columns(n), thread_scope(bind)
    threads = grid(np_, bind)

    @T.macro
    def column(gx, gw, gscale, gy, col):
        acc = T.alloc_buffer((1,), "float32", scope=scope)
        acc[0] = T.float32(0)
        for kk in range(k):
            acc[0] = acc[0] + gx[0, kk] * T.Cast("float32", gw[kk, col])
        if gscale is None:
            gy[0, col] = acc[0]
        else:
            gy[0, col] = acc[0] * gscale[col]

    if dtype == "int8":

        @T.prim_func(s_tir=True)
        def scaled(
            x: T.Buffer((1, k), "float32"),
            w: T.Buffer((k, np_), dtype),
            scale: T.Buffer((np_,), "float32"),
            y: T.Buffer((1, np_), "float32"),
        ):
            T.func_attr({"global_symbol": "main", "tir.noalias": True})
            for bx in threads.blocks:
                for tx in threads.threads:
                    if threads.valid(bx, tx):
                        column(x, w, scale, y, threads.index(bx, tx))

        return scaled

    @T.prim_func(s_tir=True)
    def func(x: T.Buffer((1, k), "float32"), w: T.Buffer((k, np_), dtype), y: T.Buffer((1, np_), "float32")):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        for bx in threads.blocks:
            for tx in threads.threads:
                if threads.valid(bx, tx):
                    column(x, w, None, y, threads.index(bx, tx))

    return func
