"""The float kernels of one decode step (one token, a fixed-capacity KV cache written in place), as TIR
PrimFuncs; the 4-bit matmul and the per-token quantizer are `kernels.int4_matmul` / `kernels.token_quantize`.

    rms_norm      y = x · 1/√(Σx²/d + ε) (⊙ γ)                                  x [1, d]
    rope          y = x·cos(p·f) + rotate_half(x)·sin(p·f), f = [inv_freq, inv_freq]   x [heads, D]
    kronecker     y = x · (A ⊗ B) per row                                          x [rows, a·b]
    channel_scale y = x ⊙ c
    cache_write   cache[:, p] = new (float), or its per-token codes with scale and zero point (a `TokenQuant`
                  of the spec, the arithmetic of `kernels.token_quantize`), in place
    attention     out[h] = Σ_{t ≤ p} softmax_t(s · q[h]·K̂[h // g, t]) · V̂[h // g, t], K̂ = (codes − z)·scale
                  read in registers (grouped-query: g query heads per KV head); q·K̂ in 16-lane partial sums
    gemv          y = x · W for a float W stored [N/16, K, 16] in float32 or float16 (the LM head)
    silu_mul      y = gate · 1/(1 + e^(−gate)) · up

p (the new token's position) is a one-element int32 tensor, so one compiled step serves every position up to
the cache's capacity. Float results match the NumPy reference (`decoder.reference`) up to float rounding:
sums are accumulated in another order, and TVM's exp/cos/sin are not NumPy's.
"""

from __future__ import annotations

import numpy as np

from qcompile.ir.quant_meta import TOKEN_MIN_SCALE

__all__ = [
    "rms_norm_func",
    "rope_func",
    "kronecker_func",
    "channel_scale_func",
    "cache_write_func",
    "attention_func",
    "gemv_func",
    "pack_gemv_weight",
    "silu_mul_func",
    "GEMV_LANES",
]

GEMV_LANES = 16


def rms_norm_func(d: int, eps: float, gamma: bool):
    """main(x f32 [1, d], [gamma f32 [d],] y f32 [1, d])."""
    from tvm.script import tirx as T

    eps_, inv_d = T.float32(float(np.float32(eps))), T.float32(float(np.float32(1.0 / d)))

    @T.macro
    def normalize(x, y, total):
        total[0] = T.float32(0)
        for k in range(d):
            total[0] = total[0] + x[0, k] * x[0, k]
        total[0] = T.float32(1) / T.sqrt(total[0] * inv_d + eps_)

    if gamma:

        @T.prim_func(s_tir=True)
        def func(x: T.Buffer((1, d), "float32"), g: T.Buffer((d,), "float32"), y: T.Buffer((1, d), "float32")):
            T.func_attr({"global_symbol": "main", "tir.noalias": True})
            total = T.alloc_buffer((1,), "float32", scope="global")
            normalize(x, y, total)
            for k in T.vectorized(d):
                y[0, k] = g[k] * (x[0, k] * total[0])

        return func

    @T.prim_func(s_tir=True)
    def func(x: T.Buffer((1, d), "float32"), y: T.Buffer((1, d), "float32")):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        total = T.alloc_buffer((1,), "float32", scope="global")
        normalize(x, y, total)
        for k in T.vectorized(d):
            y[0, k] = x[0, k] * total[0]

    return func


def rope_func(heads: int, dim: int, inv_freq: np.ndarray):
    """main(x f32 [heads, dim], pos i32 [1], y f32 [heads, dim]): Llama's rotary embedding at position pos."""
    from tvm.script import tirx as T

    half = dim // 2
    freq = [float(f) for f in np.asarray(inv_freq, np.float32)]

    def angle(pos, j):
        value = T.float32(freq[0])
        for i in range(1, half):  # a select chain of the constants (half ≤ 64): no table argument to pass
            value = T.Select(j == i, T.float32(freq[i]), value)
        return T.Cast("float32", pos[0]) * value

    @T.prim_func(s_tir=True)
    def func(x: T.Buffer((heads, dim), "float32"), pos: T.Buffer((1,), "int32"), y: T.Buffer((heads, dim), "float32")):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        for h, j in T.grid(heads, half):
            y[h, j] = x[h, j] * T.cos(angle(pos, j)) - x[h, j + half] * T.sin(angle(pos, j))
            y[h, j + half] = x[h, j + half] * T.cos(angle(pos, j)) + x[h, j] * T.sin(angle(pos, j))

    return func


def kronecker_func(rows: int, a: int, b: int):
    """main(x f32 [rows, a·b], A f32 [a, a], B f32 [b, b], y f32 [rows, a·b]): y_m = Aᵀ X_m B per row. Each output
    element sums in the reference's order (over l, then over k); the loops over its column j are innermost, so
    LLVM vectorizes across columns without reordering any sum."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def func(
        x: T.Buffer((rows, a * b), "float32"),
        fa: T.Buffer((a, a), "float32"),
        fb: T.Buffer((b, b), "float32"),
        y: T.Buffer((rows, a * b), "float32"),
    ):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        for m in T.parallel(rows):
            right = T.alloc_buffer((a * b,), "float32", scope="global")
            for k in range(a):
                for j in T.vectorized(b):
                    right[k * b + j] = T.float32(0)
                for l in range(b):  # noqa: E741
                    for j in T.vectorized(b):
                        right[k * b + j] = right[k * b + j] + x[m, k * b + l] * fb[l, j]
            for i in range(a):
                for j in T.vectorized(b):
                    y[m, i * b + j] = T.float32(0)
                for k in range(a):
                    for j in T.vectorized(b):
                        y[m, i * b + j] = y[m, i * b + j] + right[k * b + j] * fa[k, i]

    return func


def channel_scale_func(d: int):
    """main(x f32 [1, d], c f32 [d], y f32 [1, d])."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def func(x: T.Buffer((1, d), "float32"), c: T.Buffer((d,), "float32"), y: T.Buffer((1, d), "float32")):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        for k in T.vectorized(d):
            y[0, k] = x[0, k] * c[k]

    return func


def silu_mul_func(d: int):
    """main(gu f32 [1, 2d] (gate, then up), y f32 [1, d])."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def func(gu: T.Buffer((1, 2 * d), "float32"), y: T.Buffer((1, d), "float32")):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        for k in range(d):
            y[0, k] = gu[0, k] * (T.float32(1) / (T.float32(1) + T.exp(-gu[0, k]))) * gu[0, d + k]

    return func


def cache_write_func(kv_heads: int, dim: int, capacity: int, bits: int | None, symmetric: bool, clip_ratio: float):
    """Float cache (bits None): main(new f32 [kv_heads, dim], pos i32 [1], cache f32 [kv_heads, capacity, dim]).
    Quantized: main(new, pos, codes i8 [kv_heads, capacity, dim], scale f32 [kv_heads, capacity],
    zero f32 [kv_heads, capacity]); the codes as `QuantSpec.per_token` gives them (unsigned codes of an
    asymmetric quantizer stored minus 128), zero is the float zero point (0 when symmetric). In place."""
    from tvm.script import tirx as T

    if bits is None:

        @T.prim_func(s_tir=True)
        def write(
            new: T.Buffer((kv_heads, dim), "float32"),
            pos: T.Buffer((1,), "int32"),
            cache: T.Buffer((kv_heads, capacity, dim), "float32"),
        ):
            T.func_attr({"global_symbol": "main", "tir.noalias": True})
            for h, j in T.grid(kv_heads, dim):
                cache[h, pos[0], j] = new[h, j]

        return write

    ratio, tiny = T.float32(float(np.float32(clip_ratio))), T.float32(float(TOKEN_MIN_SCALE))
    top = T.float32(float(2 ** (bits - 1) - 1 if symmetric else 2**bits - 1))

    def clipped(value, lo, hi):
        return T.max(T.min(value, hi), lo)

    @T.prim_func(s_tir=True)
    def write(
        new: T.Buffer((kv_heads, dim), "float32"),
        pos: T.Buffer((1,), "int32"),
        codes: T.Buffer((kv_heads, capacity, dim), "int8"),
        scale: T.Buffer((kv_heads, capacity), "float32"),
        zero: T.Buffer((kv_heads, capacity), "float32"),
    ):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        bounds = T.alloc_buffer((3,), "float32", scope="global")
        for h in range(kv_heads):
            bounds[0] = T.float32(0)
            bounds[1] = T.float32(0)
            for j in range(dim):
                if symmetric:
                    bounds[1] = T.max(bounds[1], T.abs(new[h, j]))
                else:
                    bounds[0] = T.min(bounds[0], new[h, j])
                    bounds[1] = T.max(bounds[1], new[h, j])
            if symmetric:
                scale[h, pos[0]] = T.max((bounds[1] * ratio) / top, tiny)
                zero[h, pos[0]] = T.float32(0)
                for j in range(dim):
                    codes[h, pos[0], j] = T.Cast("int8", clipped(T.nearbyint(new[h, j] / scale[h, pos[0]]), -top, top))
            else:
                scale[h, pos[0]] = T.max((bounds[1] * ratio - bounds[0] * ratio) / top, tiny)
                zero[h, pos[0]] = clipped(T.nearbyint(-(bounds[0] * ratio) / scale[h, pos[0]]), T.float32(0), top)
                for j in range(dim):
                    codes[h, pos[0], j] = T.Cast(
                        "int8",
                        T.Cast(
                            "int32",
                            clipped(T.nearbyint(new[h, j] / scale[h, pos[0]]) + zero[h, pos[0]], T.float32(0), top),
                        )
                        - 128,
                    )

    return write


def attention_func(heads: int, kv_heads: int, dim: int, capacity: int, score_scale: float, quantized: bool, shift: int):
    """Float cache: main(q f32 [heads, dim], pos i32 [1], k f32 [kvh, cap, dim], v f32 [kvh, cap, dim],
    out f32 [1, heads·dim]). Quantized: k and v each as (codes i8, scale f32 [kvh, cap], zero f32 [kvh, cap]),
    K̂ = (codes + shift − zero)·scale (shift 128 for asymmetric codes stored minus 128). Heads in parallel."""
    from tvm.script import tirx as T

    group, c = heads // kv_heads, T.float32(float(np.float32(score_scale)))
    lanes = next(n for n in (16, 8, 4, 2, 1) if dim % n == 0)

    @T.macro
    def attend(q, pos, key, value, out, h):
        scores = T.alloc_buffer((capacity,), "float32", scope="global")
        part = T.alloc_buffer((lanes,), "float32", scope="global")
        peak = T.alloc_buffer((2,), "float32", scope="global")  # max score, then the sum of exponentials
        peak[0] = T.float32(-3.0e38)
        for t in range(pos[0] + 1):
            for jj in T.vectorized(lanes):
                part[jj] = T.float32(0)
            for j0 in range(dim // lanes):
                for jj in T.vectorized(lanes):
                    part[jj] = part[jj] + q[h, j0 * lanes + jj] * key(h // group, t, j0 * lanes + jj)
            scores[t] = T.float32(0)
            for jj in range(lanes):
                scores[t] = scores[t] + part[jj]
            scores[t] = scores[t] * c
            peak[0] = T.max(peak[0], scores[t])
        peak[1] = T.float32(0)
        for t in range(pos[0] + 1):
            scores[t] = T.exp(scores[t] - peak[0])
            peak[1] = peak[1] + scores[t]
        for j in T.vectorized(dim):
            out[0, h * dim + j] = T.float32(0)
        for t in range(pos[0] + 1):
            for j in T.vectorized(dim):
                out[0, h * dim + j] = out[0, h * dim + j] + (scores[t] / peak[1]) * value(h // group, t, j)

    if not quantized:

        @T.prim_func(s_tir=True)
        def func(
            q: T.Buffer((heads, dim), "float32"),
            pos: T.Buffer((1,), "int32"),
            k: T.Buffer((kv_heads, capacity, dim), "float32"),
            v: T.Buffer((kv_heads, capacity, dim), "float32"),
            out: T.Buffer((1, heads * dim), "float32"),
        ):
            T.func_attr({"global_symbol": "main", "tir.noalias": True})
            for h in T.parallel(heads):
                attend(q, pos, lambda g, t, j: k[g, t, j], lambda g, t, j: v[g, t, j], out, h)

        return func

    def dequant(codes, scale, zero):
        return lambda g, t, j: (T.Cast("float32", T.Cast("int32", codes[g, t, j]) + shift) - zero[g, t]) * scale[g, t]

    @T.prim_func(s_tir=True)
    def func(
        q: T.Buffer((heads, dim), "float32"),
        pos: T.Buffer((1,), "int32"),
        kc: T.Buffer((kv_heads, capacity, dim), "int8"),
        ks: T.Buffer((kv_heads, capacity), "float32"),
        kz: T.Buffer((kv_heads, capacity), "float32"),
        vc: T.Buffer((kv_heads, capacity, dim), "int8"),
        vs: T.Buffer((kv_heads, capacity), "float32"),
        vz: T.Buffer((kv_heads, capacity), "float32"),
        out: T.Buffer((1, heads * dim), "float32"),
    ):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        for h in T.parallel(heads):
            attend(q, pos, dequant(kc, ks, kz), dequant(vc, vs, vz), out, h)

    return func


def pack_gemv_weight(weight: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """[K, N] float → [ceil(N/16), K, 16] of `dtype` (float32, or float16: rounded to nearest), columns zero-padded."""
    k, n = weight.shape
    np_ = -(-n // GEMV_LANES) * GEMV_LANES
    padded = np.zeros((k, np_), dtype)
    padded[:, :n] = weight
    return np.ascontiguousarray(padded.reshape(k, np_ // GEMV_LANES, GEMV_LANES).transpose(1, 0, 2))


def gemv_func(k: int, n: int, blocks: int = 4, dtype: str = "float32"):
    """main(x f32 [1, k], w [N/16, k, 16] of `dtype` (`pack_gemv_weight`), y f32 [1, N padded]): column blocks of
    16·`blocks` in parallel, 16-lane vector accumulators; float16 weights are widened to float32 in registers."""
    from tvm.script import tirx as T

    tiles = -(-n // GEMV_LANES)
    while tiles % blocks:
        blocks -= 1
    lanes = GEMV_LANES

    @T.prim_func(s_tir=True)
    def func(
        x: T.Buffer((1, k), "float32"),
        w: T.Buffer((tiles, k, lanes), dtype),
        y: T.Buffer((1, tiles * lanes), "float32"),
    ):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        for task in T.parallel(tiles // blocks):
            acc = T.alloc_buffer((blocks, lanes), "float32", scope="global")
            for b in T.unroll(blocks):
                acc[b, T.ramp(0, 1, lanes)] = T.broadcast(T.float32(0), lanes)
            for kk in range(k):
                for b in T.unroll(blocks):
                    acc[b, T.ramp(0, 1, lanes)] = (
                        acc[b, T.ramp(0, 1, lanes)]
                        + T.broadcast(x[0, kk], lanes) * w[task * blocks + b, kk, T.ramp(0, 1, lanes)]
                    )
            for b in T.unroll(blocks):
                y[0, T.ramp((task * blocks + b) * lanes, 1, lanes)] = acc[b, T.ramp(0, 1, lanes)]

    return func
