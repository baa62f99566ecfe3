"""The KV cache's kernels for CUDA GPUs: the write of a step's keys or values and the attention over the cache, with
`kernels.cache_write_func` / `kernels.attention_func`'s signatures and arithmetic, as phases of independent threads
(`gpu_kernels.grid`; `bind=False` runs the same kernel on a CPU):

    cache_write   per (token i, KV head h): the per-token scale and zero point of new[i, h]   → the cache at p + i
                  per element: its code (or, in a float cache of quantized values, (q − z)·s)
    attention     scores  per (i, head, t ≤ p + i):  s·q[i, head]·K̂[head // g, t]            (scratch [m, heads, cap])
                  softmax per (i, head): max, e^(x − max) (`kernels.fast_exp`), their sum, the quotients, in t order
                  output  per (i, head, j): Σ_{t ≤ p + i} p_t·V̂[head // g, t, j], t in order

K̂ = (codes + shift − z)·scale as it is read (the codes stay int8 in memory). The score of a position is one
thread's dot product over the head (j in order; the CPU kernel sums 16-lane partial sums, so scores differ in the
last bits from the CPU's), the softmax one thread's pass over the row's positions.
"""

from __future__ import annotations

import numpy as np

from qcompile.backends.tvm.decoder.gpu_kernels import clipped, quant_constants
from qcompile.backends.tvm.decoder.kernels import fast_exp
from qcompile.backends.tvm.kernels.gpu_grid import grid, thread_scope

__all__ = ["cache_write_func", "attention_func"]


def cache_write_func(
    m: int,
    kv_heads: int,
    dim: int,
    capacity: int,
    bits: int | None,
    symmetric: bool,
    clip_ratio: float,
    as_codes: bool = True,
    bind: bool = True,
):
    """As `kernels.cache_write_func` (float, quantized, or quantized values in a float cache), in place."""
    from tvm.script import tirx as T

    tokens, items, scope = grid(m * kv_heads, bind), grid(m * kv_heads * dim, bind), thread_scope(bind)

    def at(bx, tx):
        """(token, KV head, j) of an element thread."""
        index = items.index(bx, tx)
        return index // (kv_heads * dim), index // dim % kv_heads, index % dim

    if bits is None:

        @T.prim_func(s_tir=True)
        def write(
            new: T.Buffer((m, kv_heads, dim), "float32"),
            pos: T.Buffer((1,), "int32"),
            cache: T.Buffer((kv_heads, capacity, dim), "float32"),
        ):
            T.func_attr({"global_symbol": "main", "tir.noalias": True})
            for bx in items.blocks:
                for tx in items.threads:
                    if items.valid(bx, tx):
                        cache[at(bx, tx)[1], pos[0] + at(bx, tx)[0], at(bx, tx)[2]] = new[
                            at(bx, tx)[0], at(bx, tx)[1], at(bx, tx)[2]
                        ]

        return write

    ratio, tiny, top = quant_constants(bits, symmetric, clip_ratio)

    @T.macro
    def parameters(wnew, wscale, wzero, wpos):
        """Per (token, head): its scale and float zero point into wscale / wzero [kv_heads, capacity] at pos + i."""
        for bx in tokens.blocks:
            for tx in tokens.threads:
                if tokens.valid(bx, tx):
                    bounds = T.alloc_buffer((2,), "float32", scope=scope)
                    bounds[0] = T.float32(0)
                    bounds[1] = T.float32(0)
                    for j in range(dim):
                        if symmetric:
                            bounds[1] = T.max(
                                bounds[1],
                                T.abs(wnew[tokens.index(bx, tx) // kv_heads, tokens.index(bx, tx) % kv_heads, j]),
                            )
                        else:
                            bounds[0] = T.min(
                                bounds[0], wnew[tokens.index(bx, tx) // kv_heads, tokens.index(bx, tx) % kv_heads, j]
                            )
                            bounds[1] = T.max(
                                bounds[1], wnew[tokens.index(bx, tx) // kv_heads, tokens.index(bx, tx) % kv_heads, j]
                            )
                    if symmetric:
                        wscale[tokens.index(bx, tx) % kv_heads, wpos[0] + tokens.index(bx, tx) // kv_heads] = T.max(
                            (bounds[1] * ratio) / top, tiny
                        )
                        wzero[tokens.index(bx, tx) % kv_heads, wpos[0] + tokens.index(bx, tx) // kv_heads] = T.float32(
                            0
                        )
                    else:
                        wscale[tokens.index(bx, tx) % kv_heads, wpos[0] + tokens.index(bx, tx) // kv_heads] = T.max(
                            (bounds[1] * ratio - bounds[0] * ratio) / top, tiny
                        )
                        wzero[tokens.index(bx, tx) % kv_heads, wpos[0] + tokens.index(bx, tx) // kv_heads] = clipped(
                            T.nearbyint(
                                -(bounds[0] * ratio)
                                / wscale[tokens.index(bx, tx) % kv_heads, wpos[0] + tokens.index(bx, tx) // kv_heads]
                            ),
                            T.float32(0),
                            top,
                        )

    def level(new, scale, zero, pos, bx, tx):
        """The element's quantization level: rint(x/s) clipped (symmetric), or rint(x/s) + z clipped."""
        i, h, j = at(bx, tx)
        if symmetric:
            return clipped(T.nearbyint(new[i, h, j] / scale[h, pos[0] + i]), -top, top)
        return clipped(T.nearbyint(new[i, h, j] / scale[h, pos[0] + i]) + zero[h, pos[0] + i], T.float32(0), top)

    if not as_codes:

        @T.prim_func(s_tir=True)
        def write_values(
            new: T.Buffer((m, kv_heads, dim), "float32"),
            pos: T.Buffer((1,), "int32"),
            cache: T.Buffer((kv_heads, capacity, dim), "float32"),
        ):
            T.func_attr({"global_symbol": "main", "tir.noalias": True})
            scale = T.alloc_buffer((kv_heads, capacity), "float32")
            zero = T.alloc_buffer((kv_heads, capacity), "float32")
            parameters(new, scale, zero, pos)
            for bx in items.blocks:
                for tx in items.threads:
                    if items.valid(bx, tx):
                        cache[at(bx, tx)[1], pos[0] + at(bx, tx)[0], at(bx, tx)[2]] = (
                            level(new, scale, zero, pos, bx, tx) - zero[at(bx, tx)[1], pos[0] + at(bx, tx)[0]]
                        ) * scale[at(bx, tx)[1], pos[0] + at(bx, tx)[0]]

        return write_values

    shift = 0 if symmetric else 128

    @T.prim_func(s_tir=True)
    def write(
        new: T.Buffer((m, kv_heads, dim), "float32"),
        pos: T.Buffer((1,), "int32"),
        codes: T.Buffer((kv_heads, capacity, dim), "int8"),
        scale: T.Buffer((kv_heads, capacity), "float32"),
        zero: T.Buffer((kv_heads, capacity), "float32"),
    ):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        parameters(new, scale, zero, pos)
        for bx in items.blocks:
            for tx in items.threads:
                if items.valid(bx, tx):
                    codes[at(bx, tx)[1], pos[0] + at(bx, tx)[0], at(bx, tx)[2]] = T.Cast(
                        "int8", T.Cast("int32", level(new, scale, zero, pos, bx, tx)) - shift
                    )

    return write


def attention_func(
    m: int,
    heads: int,
    kv_heads: int,
    dim: int,
    capacity: int,
    score_scale: float,
    quantized: bool,
    shift: int,
    bind: bool = True,
):
    """As `kernels.attention_func`: main(q, pos, keys…, values…, out f32 [m, heads·dim])."""
    from tvm.script import tirx as T

    group, c = heads // kv_heads, T.float32(float(np.float32(score_scale)))
    scores, rows, items, scope = (
        grid(m * heads * capacity, bind),
        grid(m * heads, bind),
        grid(m * heads * dim, bind),
        thread_scope(bind),
    )

    @T.macro
    def attend(aq, apos, key, value, aout):
        prob = T.alloc_buffer((m, heads, capacity), "float32")
        for bx in scores.blocks:
            for tx in scores.threads:
                if scores.valid(bx, tx):
                    if scores.index(bx, tx) % capacity <= apos[0] + scores.index(bx, tx) // (heads * capacity):
                        acc = T.alloc_buffer((1,), "float32", scope=scope)
                        acc[0] = T.float32(0)
                        for j in range(dim):
                            acc[0] = acc[0] + aq[
                                scores.index(bx, tx) // (heads * capacity), scores.index(bx, tx) // capacity % heads, j
                            ] * key(
                                scores.index(bx, tx) // capacity % heads // group, scores.index(bx, tx) % capacity, j
                            )
                        prob[
                            scores.index(bx, tx) // (heads * capacity),
                            scores.index(bx, tx) // capacity % heads,
                            scores.index(bx, tx) % capacity,
                        ] = acc[0] * c
        for bx in rows.blocks:
            for tx in rows.threads:
                if rows.valid(bx, tx):
                    peak = T.alloc_buffer((2,), "float32", scope=scope)  # max score, then the sum of exponentials
                    peak[0] = T.float32(-3.0e38)
                    for t in range(apos[0] + rows.index(bx, tx) // heads + 1):
                        peak[0] = T.max(peak[0], prob[rows.index(bx, tx) // heads, rows.index(bx, tx) % heads, t])
                    peak[1] = T.float32(0)
                    for t in range(apos[0] + rows.index(bx, tx) // heads + 1):
                        prob[rows.index(bx, tx) // heads, rows.index(bx, tx) % heads, t] = fast_exp(
                            prob[rows.index(bx, tx) // heads, rows.index(bx, tx) % heads, t] - peak[0]
                        )
                        peak[1] = peak[1] + prob[rows.index(bx, tx) // heads, rows.index(bx, tx) % heads, t]
                    for t in range(apos[0] + rows.index(bx, tx) // heads + 1):
                        prob[rows.index(bx, tx) // heads, rows.index(bx, tx) % heads, t] = (
                            prob[rows.index(bx, tx) // heads, rows.index(bx, tx) % heads, t] / peak[1]
                        )
        for bx in items.blocks:
            for tx in items.threads:
                if items.valid(bx, tx):
                    acc = T.alloc_buffer((1,), "float32", scope=scope)
                    acc[0] = T.float32(0)
                    for t in range(apos[0] + items.index(bx, tx) // (heads * dim) + 1):
                        acc[0] = acc[0] + prob[
                            items.index(bx, tx) // (heads * dim), items.index(bx, tx) // dim % heads, t
                        ] * value(items.index(bx, tx) // dim % heads // group, t, items.index(bx, tx) % dim)
                    aout[items.index(bx, tx) // (heads * dim), items.index(bx, tx) % (heads * dim)] = acc[0]

    if not quantized:

        @T.prim_func(s_tir=True)
        def func(
            q: T.Buffer((m, heads, dim), "float32"),
            pos: T.Buffer((1,), "int32"),
            k: T.Buffer((kv_heads, capacity, dim), "float32"),
            v: T.Buffer((kv_heads, capacity, dim), "float32"),
            out: T.Buffer((m, heads * dim), "float32"),
        ):
            T.func_attr({"global_symbol": "main", "tir.noalias": True})
            attend(q, pos, lambda g, t, j: k[g, t, j], lambda g, t, j: v[g, t, j], out)

        return func

    def dequant(codes, scale, zero):
        return lambda g, t, j: (T.Cast("float32", T.Cast("int32", codes[g, t, j]) + shift) - zero[g, t]) * scale[g, t]

    @T.prim_func(s_tir=True)
    def quantized_func(
        q: T.Buffer((m, heads, dim), "float32"),
        pos: T.Buffer((1,), "int32"),
        kc: T.Buffer((kv_heads, capacity, dim), "int8"),
        ks: T.Buffer((kv_heads, capacity), "float32"),
        kz: T.Buffer((kv_heads, capacity), "float32"),
        vc: T.Buffer((kv_heads, capacity, dim), "int8"),
        vs: T.Buffer((kv_heads, capacity), "float32"),
        vz: T.Buffer((kv_heads, capacity), "float32"),
        out: T.Buffer((m, heads * dim), "float32"),
    ):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        attend(q, pos, dequant(kc, ks, kz), dequant(vc, vs, vz), out)

    return quantized_func
