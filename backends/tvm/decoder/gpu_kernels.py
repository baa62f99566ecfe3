"""The step's float kernels for CUDA GPUs: the same functions, signatures and arithmetic as `kernels` (the CPU's),
written as grids of independent threads. A kernel is one or more phases; a phase is one thread per output element
(or per row where it reduces one), in blocks of `THREADS`:

    rms_norm      per row: r = 1/√(Σx²/d + ε)                      per element: y = x·r (⊙ γ)
    token_quantize per row: the scale and zero point (`QuantSpec.per_token`)    per element: the code
    kronecker     per element: R = X_m B, then per element: y = Aᵀ R        (a = 1: y = (X_m B)·A[0, 0], one phase)
    rope_table, rope, silu_mul, channel_scale, the float cache write: per element
    cache_write   per (token, KV head): scale and zero point into the cache   per element: the code
    attention     per (row, head, position ≤ p + i): the score      per (row, head): softmax in place
                  per (row, head, j): Σ_t p_t·V̂[t, j]      (K̂, V̂ dequantized as they are read)
    gemv          per column: Σ_k x[k]·W[k, n] over W [K, Np] (float32, float16 or int8 codes × a column scale)

Phases hand over through scratch tensors of the kernel (TVM launches each thread-bound loop nest as its own CUDA
kernel, in order, so a phase sees the whole of the previous one's output): no shared memory, no barrier, no
cross-thread reduction. That keeps every kernel checkable without a GPU: built with `bind=False` its thread loops
are serial loops and it runs on the CPU, with the same expressions (tests/backends/test_tvm_decoder_gpu.py checks
each against `kernels`). A reduction over a row is one thread's serial loop: the row's order, as the CPU kernels
sum it. The float products are rounded on their own on the GPU too (`fence.round_float_products`, CUDA's
`__fmul_rn`), so the quantizers' codes follow the CPU's rounding op for op.
"""

from __future__ import annotations

import numpy as np

from qcompile.backends.tvm.decoder.kernels import fast_exp, rope_angle
from qcompile.backends.tvm.kernels.gpu_grid import grid, thread_scope
from qcompile.backends.tvm.kernels.token_quantize import SHIFT
from qcompile.ir.quant_meta import TOKEN_MIN_SCALE

__all__ = [
    "clipped",
    "quant_constants",
    "rms_norm_func",
    "token_quantize_func",
    "silu_mul_func",
    "channel_scale_func",
    "kronecker_func",
    "rope_table_func",
    "rope_func",
    "rope_kronecker_func",
]


def clipped(value, lo, hi):
    from tvm.script import tirx as T

    return T.max(T.min(value, hi), lo)


def quant_constants(bits: int, symmetric: bool, clip_ratio: float):
    from tvm.script import tirx as T

    ratio, tiny = T.float32(float(np.float32(clip_ratio))), T.float32(float(TOKEN_MIN_SCALE))
    top = T.float32(float(2 ** (bits - 1) - 1 if symmetric else 2**bits - 1))
    return ratio, tiny, top


def rms_norm_func(m: int, d: int, eps: float, gamma: bool, bind: bool = True):
    """main(x f32 [m, d], [gamma f32 [d],] y f32 [m, d]) as `kernels.rms_norm_func`."""
    from tvm.script import tirx as T

    eps_, inv_d = T.float32(float(np.float32(eps))), T.float32(float(np.float32(1.0 / d)))
    rows, items, scope = grid(m, bind), grid(m * d, bind), thread_scope(bind)

    @T.macro
    def phases(x, g, y):
        inv = T.alloc_buffer((m,), "float32")
        for bx in rows.blocks:
            for tx in rows.threads:
                if rows.valid(bx, tx):
                    total = T.alloc_buffer((1,), "float32", scope=scope)
                    total[0] = T.float32(0)
                    for k in range(d):
                        total[0] = total[0] + x[rows.index(bx, tx), k] * x[rows.index(bx, tx), k]
                    inv[rows.index(bx, tx)] = T.float32(1) / T.sqrt(total[0] * inv_d + eps_)
        for bx in items.blocks:
            for tx in items.threads:
                if items.valid(bx, tx):
                    if gamma:
                        y[items.index(bx, tx) // d, items.index(bx, tx) % d] = g[items.index(bx, tx) % d] * (
                            x[items.index(bx, tx) // d, items.index(bx, tx) % d] * inv[items.index(bx, tx) // d]
                        )
                    else:
                        y[items.index(bx, tx) // d, items.index(bx, tx) % d] = (
                            x[items.index(bx, tx) // d, items.index(bx, tx) % d] * inv[items.index(bx, tx) // d]
                        )

    if gamma:

        @T.prim_func(s_tir=True)
        def func(x: T.Buffer((m, d), "float32"), g: T.Buffer((d,), "float32"), y: T.Buffer((m, d), "float32")):
            T.func_attr({"global_symbol": "main", "tir.noalias": True})
            phases(x, g, y)

        return func

    @T.prim_func(s_tir=True)
    def plain(x: T.Buffer((m, d), "float32"), y: T.Buffer((m, d), "float32")):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        phases(x, None, y)

    return plain


def token_quantize_func(
    m: int, k: int, bits: int, symmetric: bool, clip_ratio: float = 1.0, vector: int = 16, bind: bool = True
):
    """main(x f32 [m, k], codes i8 [m, k], scale f32 [m][, zero i32 [m]]) as `token_quantize.token_quantize_func`
    (`vector` is the CPU's and ignored): per row its scale (and zero point), then per element its code."""
    from tvm.script import tirx as T

    if not 2 <= bits <= 8:
        raise ValueError(f"per-token codes need 2 to 8 bits, got {bits}")
    ratio, tiny, top = quant_constants(bits, symmetric, clip_ratio)
    rows, items, scope = grid(m, bind), grid(m * k, bind), thread_scope(bind)

    @T.macro
    def phases(x, codes, scale, zero):
        point = T.alloc_buffer((m,), "float32")  # the float zero point of each row
        for bx in rows.blocks:
            for tx in rows.threads:
                if rows.valid(bx, tx):
                    bounds = T.alloc_buffer((2,), "float32", scope=scope)
                    bounds[0] = T.float32(0)
                    bounds[1] = T.float32(0)
                    for j in range(k):
                        if symmetric:
                            bounds[1] = T.max(bounds[1], T.abs(x[rows.index(bx, tx), j]))
                        else:
                            bounds[0] = T.min(bounds[0], x[rows.index(bx, tx), j])
                            bounds[1] = T.max(bounds[1], x[rows.index(bx, tx), j])
                    if symmetric:
                        scale[rows.index(bx, tx)] = T.max((bounds[1] * ratio) / top, tiny)
                        point[rows.index(bx, tx)] = T.float32(0)
                    else:
                        scale[rows.index(bx, tx)] = T.max((bounds[1] * ratio - bounds[0] * ratio) / top, tiny)
                        point[rows.index(bx, tx)] = clipped(
                            T.nearbyint(-(bounds[0] * ratio) / scale[rows.index(bx, tx)]), T.float32(0), top
                        )
                        zero[rows.index(bx, tx)] = T.Cast("int32", point[rows.index(bx, tx)]) - SHIFT
        for bx in items.blocks:
            for tx in items.threads:
                if items.valid(bx, tx):
                    if symmetric:
                        codes[items.index(bx, tx) // k, items.index(bx, tx) % k] = T.Cast(
                            "int8",
                            clipped(
                                T.nearbyint(
                                    x[items.index(bx, tx) // k, items.index(bx, tx) % k]
                                    / scale[items.index(bx, tx) // k]
                                ),
                                -top,
                                top,
                            ),
                        )
                    else:
                        codes[items.index(bx, tx) // k, items.index(bx, tx) % k] = T.Cast(
                            "int8",
                            T.Cast(
                                "int32",
                                clipped(
                                    T.nearbyint(
                                        x[items.index(bx, tx) // k, items.index(bx, tx) % k]
                                        / scale[items.index(bx, tx) // k]
                                    )
                                    + point[items.index(bx, tx) // k],
                                    T.float32(0),
                                    top,
                                ),
                            )
                            - SHIFT,
                        )

    if symmetric:

        @T.prim_func(s_tir=True)
        def func(x: T.Buffer((m, k), "float32"), codes: T.Buffer((m, k), "int8"), scale: T.Buffer((m,), "float32")):
            T.func_attr({"global_symbol": "main", "tir.noalias": True})
            phases(x, codes, scale, None)

        return func

    @T.prim_func(s_tir=True)
    def asymmetric(
        x: T.Buffer((m, k), "float32"),
        codes: T.Buffer((m, k), "int8"),
        scale: T.Buffer((m,), "float32"),
        zero: T.Buffer((m,), "int32"),
    ):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        phases(x, codes, scale, zero)

    return asymmetric


def silu_mul_func(m: int, d: int, bind: bool = True):
    """main(gu f32 [m, 2d] (gate, then up), y f32 [m, d]): y = g · 1/(1 + e^(−g)) · u with `kernels.fast_exp`."""
    from tvm.script import tirx as T

    items = grid(m * d, bind)

    @T.prim_func(s_tir=True)
    def func(gu: T.Buffer((m, 2 * d), "float32"), y: T.Buffer((m, d), "float32")):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        for bx in items.blocks:
            for tx in items.threads:
                if items.valid(bx, tx):
                    y[items.index(bx, tx) // d, items.index(bx, tx) % d] = (
                        gu[items.index(bx, tx) // d, items.index(bx, tx) % d]
                        * (
                            T.float32(1)
                            / (T.float32(1) + fast_exp(-gu[items.index(bx, tx) // d, items.index(bx, tx) % d]))
                        )
                        * gu[items.index(bx, tx) // d, d + items.index(bx, tx) % d]
                    )

    return func


def channel_scale_func(m: int, d: int, bind: bool = True):
    """main(x f32 [m, d], c f32 [d], y f32 [m, d])."""
    from tvm.script import tirx as T

    items = grid(m * d, bind)

    @T.prim_func(s_tir=True)
    def func(x: T.Buffer((m, d), "float32"), c: T.Buffer((d,), "float32"), y: T.Buffer((m, d), "float32")):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        for bx in items.blocks:
            for tx in items.threads:
                if items.valid(bx, tx):
                    y[items.index(bx, tx) // d, items.index(bx, tx) % d] = (
                        x[items.index(bx, tx) // d, items.index(bx, tx) % d] * c[items.index(bx, tx) % d]
                    )

    return func


def kronecker_macro(rows: int, a: int, b: int, bind: bool):
    """A TVMScript macro `kronecker(kx, kfa, kfb, ky)`: ky_m = Aᵀ X_m B for the rows of kx [rows, a·b], summed in
    `kernels.kronecker_func`'s order (over l, then over k)."""
    from tvm.script import tirx as T

    width = a * b
    items, scope = grid(rows * width, bind), thread_scope(bind)

    @T.macro
    def right_side(kx, kfb, kr, kfa):
        """kr = X_m B per element (times A[0, 0] when `kfa` is given: a = 1)."""
        for bx in items.blocks:
            for tx in items.threads:
                if items.valid(bx, tx):
                    acc = T.alloc_buffer((1,), "float32", scope=scope)
                    acc[0] = T.float32(0)
                    for l in range(b):  # noqa: E741
                        acc[0] = (
                            acc[0]
                            + kx[items.index(bx, tx) // width, items.index(bx, tx) % width // b * b + l]
                            * kfb[l, items.index(bx, tx) % b]
                        )
                    if kfa is None:
                        kr[items.index(bx, tx) // width, items.index(bx, tx) % width] = acc[0]
                    else:
                        kr[items.index(bx, tx) // width, items.index(bx, tx) % width] = acc[0] * kfa[0, 0]

    if a == 1:

        @T.macro
        def single(kx, kfa, kfb, ky):
            right_side(kx, kfb, ky, kfa)

        return single

    @T.macro
    def kronecker(kx, kfa, kfb, ky):
        right = T.alloc_buffer((rows, width), "float32")
        right_side(kx, kfb, right, None)
        for bx in items.blocks:
            for tx in items.threads:
                if items.valid(bx, tx):
                    acc = T.alloc_buffer((1,), "float32", scope=scope)
                    acc[0] = T.float32(0)
                    for k in range(a):
                        acc[0] = (
                            acc[0]
                            + right[items.index(bx, tx) // width, k * b + items.index(bx, tx) % b]
                            * kfa[k, items.index(bx, tx) % width // b]
                        )
                    ky[items.index(bx, tx) // width, items.index(bx, tx) % width] = acc[0]

    return kronecker


def kronecker_func(rows: int, a: int, b: int, bind: bool = True):
    """main(x f32 [rows, a·b], A f32 [a, a], B f32 [b, b], y f32 [rows, a·b]) as `kernels.kronecker_func`."""
    from tvm.script import tirx as T

    kronecker = kronecker_macro(rows, a, b, bind)

    @T.prim_func(s_tir=True)
    def func(
        x: T.Buffer((rows, a * b), "float32"),
        fa: T.Buffer((a, a), "float32"),
        fb: T.Buffer((b, b), "float32"),
        y: T.Buffer((rows, a * b), "float32"),
    ):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        kronecker(x, fa, fb, y)

    return func


def rope_table_func(m: int, dim: int, inv_freq: np.ndarray, bind: bool = True):
    """main(pos i32 [1], cos f32 [m, dim/2], sin f32 [m, dim/2]) as `kernels.rope_table_func` (CUDA's cosf/sinf)."""
    from tvm.script import tirx as T

    half = dim // 2
    freq = [float(f) for f in np.asarray(inv_freq, np.float32)]
    items = grid(m * half, bind)

    @T.prim_func(s_tir=True)
    def func(pos: T.Buffer((1,), "int32"), cos: T.Buffer((m, half), "float32"), sin: T.Buffer((m, half), "float32")):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        for bx in items.blocks:
            for tx in items.threads:
                if items.valid(bx, tx):
                    cos[items.index(bx, tx) // half, items.index(bx, tx) % half] = T.cos(
                        rope_angle(freq, pos, items.index(bx, tx) // half, items.index(bx, tx) % half)
                    )
                    sin[items.index(bx, tx) // half, items.index(bx, tx) % half] = T.sin(
                        rope_angle(freq, pos, items.index(bx, tx) // half, items.index(bx, tx) % half)
                    )

    return func


def _rope_macro(m: int, heads: int, dim: int, bind: bool):
    """A macro `rope(rx, rcos, rsin, ry)`: one thread per (row, head, j < dim/2) writes ry's j and j + dim/2."""
    from tvm.script import tirx as T

    half = dim // 2
    items = grid(m * heads * half, bind)

    def at(bx, tx):
        index = items.index(bx, tx)
        return index // (heads * half), index // half % heads, index % half

    @T.macro
    def rope(rx, rcos, rsin, ry):
        for bx in items.blocks:
            for tx in items.threads:
                if items.valid(bx, tx):
                    ry[at(bx, tx)[0], at(bx, tx)[1], at(bx, tx)[2]] = (
                        rx[at(bx, tx)[0], at(bx, tx)[1], at(bx, tx)[2]] * rcos[at(bx, tx)[0], at(bx, tx)[2]]
                        - rx[at(bx, tx)[0], at(bx, tx)[1], at(bx, tx)[2] + half] * rsin[at(bx, tx)[0], at(bx, tx)[2]]
                    )
                    ry[at(bx, tx)[0], at(bx, tx)[1], at(bx, tx)[2] + half] = (
                        rx[at(bx, tx)[0], at(bx, tx)[1], at(bx, tx)[2] + half] * rcos[at(bx, tx)[0], at(bx, tx)[2]]
                        + rx[at(bx, tx)[0], at(bx, tx)[1], at(bx, tx)[2]] * rsin[at(bx, tx)[0], at(bx, tx)[2]]
                    )

    return rope


def rope_func(m: int, heads: int, dim: int, bind: bool = True):
    """main(x f32 [m, heads, dim], cos f32 [m, dim/2], sin f32 [m, dim/2], y f32 [m, heads, dim])."""
    from tvm.script import tirx as T

    half, rope = dim // 2, _rope_macro(m, heads, dim, bind)

    @T.prim_func(s_tir=True)
    def func(
        x: T.Buffer((m, heads, dim), "float32"),
        cos: T.Buffer((m, half), "float32"),
        sin: T.Buffer((m, half), "float32"),
        y: T.Buffer((m, heads, dim), "float32"),
    ):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        rope(x, cos, sin, y)

    return func


def rope_kronecker_func(m: int, heads: int, dim: int, a: int, b: int, bind: bool = True):
    """main(x, cos, sin, A f32 [a, a], B f32 [b, b], y f32 [m·heads, dim]): RoPE, then the per-head Kronecker
    transform, as `kernels.rope_kronecker_func`."""
    from tvm.script import tirx as T

    if a * b != dim:
        raise ValueError(f"a Kronecker step of {a} x {b} does not transform heads of {dim}")
    half, rope, kronecker = dim // 2, _rope_macro(m, heads, dim, bind), kronecker_macro(m * heads, a, b, bind)

    @T.prim_func(s_tir=True)
    def func(
        x: T.Buffer((m, heads, dim), "float32"),
        cos: T.Buffer((m, half), "float32"),
        sin: T.Buffer((m, half), "float32"),
        fa: T.Buffer((a, a), "float32"),
        fb: T.Buffer((b, b), "float32"),
        y: T.Buffer((m * heads, dim), "float32"),
    ):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        roped = T.alloc_buffer((m * heads, dim), "float32")
        by_head = T.decl_buffer((m, heads, dim), "float32", data=roped.data)
        rope(x, cos, sin, by_head)
        kronecker(roped, fa, fb, y)

    return func
