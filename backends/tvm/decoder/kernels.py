"""The float kernels of one step of m new tokens (m = 1: a decode step; more: a prefill chunk) over a
fixed-capacity KV cache written in place, as TIR PrimFuncs; the 4-bit matmul and the per-token quantizer are
`kernels.int4_matmul` / `kernels.token_quantize`. Row i of a step is the token at position p + i.

    rms_norm      y = x · 1/√(Σx²/d + ε) (⊙ γ)                                  x [m, d]
    rope_table    cos((p + i)·f_j), sin((p + i)·f_j) for the step's rows, once per step
    rope          y = x·cos + rotate_half(x)·sin (the table's halves repeated)         x [m, heads, D]
    qkv_rope      q, k, v of the q/k/v matmul's output, q and k roped as they are read
    kronecker     y = x · (A ⊗ B) per row                                          x [rows, a·b]
    channel_scale y = x ⊙ c
    cache_write   cache[:, p] = new (float), or its per-token codes with scale and zero point (a `TokenQuant`
                  of the spec, the arithmetic of `kernels.token_quantize`), in place
    attention     out[i, h] = Σ_{t ≤ p+i} softmax_t(s · q[i, h]·K̂[h // g, t]) · V̂[h // g, t], K̂ = (codes − z)·scale
                  read in registers (grouped-query: g query heads per KV head); q·K̂ in 16-lane partial sums
    gemv          y = x · W for a float W stored [N/64, K, 4, 16] in float32 or float16 (the LM head), or
                  y[n] = s[n] · Σ_k x[k]·q[k, n] for int8 codes q with a scale per column (the LM head in int8)
    silu_mul      y = gate · 1/(1 + e^(−gate)) · up

p (the first new token's position) is a one-element int32 tensor, so one compiled step serves every position up
to the cache's capacity. Float results match the NumPy reference (`decoder.reference`) up to float rounding:
sums are accumulated in another order, exp is `fast_exp` (Cephes' polynomial, vectorizable) and cos/sin are
LLVM's, not NumPy's.
"""

from __future__ import annotations

import numpy as np

from qcompile.ir.quant_meta import TOKEN_MIN_SCALE

__all__ = [
    "rms_norm_func",
    "rms_row_macro",
    "silu_row_macro",
    "rope_table_func",
    "rope_angle",
    "rope_func",
    "rope_kronecker_func",
    "qkv_rope_func",
    "kronecker_func",
    "kronecker_macro",
    "signed_hadamard",
    "hadamard_table",
    "channel_scale_func",
    "cache_write_func",
    "attention_func",
    "gemv_func",
    "pack_gemv_weight",
    "quantize_gemv_weight",
    "silu_mul_func",
    "GEMV_LANES",
    "gemv_columns",
]

GEMV_LANES = 16
GEMV_BLOCKS = 4  # column tiles per GEMV task, packed side by side (`pack_gemv_weight`)
# a Kronecker transform of fewer multiply-adds runs on the calling thread: launching a parallel loop costs about
# as much as this work takes one core (a per-head 64 × 64 transform of 9 heads is 37 K)
PARALLEL_MACS = 65536
# a decode step's attention splits each KV head's positions into this many runs (tasks in parallel: 3 KV heads give
# 12, even on 2 or 4 threads), `split_attention_macro`
ATTENTION_PARTS = 4
# Cephes' expf: exp(x) = 2^n · p(r), n = round(x·log2 e), r = x − n·ln 2 (ln 2 split in two), p of degree 7
_LN2_HI, _LN2_LO, _LOG2E = 0.693359375, -2.12194440e-4, 1.4426950408889634
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def fast_exp(x):
    """e^x of a float32 TIR expression (scalar, or a lane of a vectorized loop) without a libm call, so loops over
    it vectorize: Cephes' range reduction and polynomial, about 1e-7 relative error; x clamped to [−87, 88]."""
    from tvm.script import tirx as T

    x = T.max(T.min(x, T.float32(88.0)), T.float32(-87.0))
    n = T.floor(x * T.float32(_LOG2E) + T.float32(0.5))
    r = x - n * T.float32(_LN2_HI) - n * T.float32(_LN2_LO)
    poly = T.float32(_EXP_POLY[0])
    for coefficient in _EXP_POLY[1:]:
        poly = poly * r + T.float32(coefficient)
    poly = poly * (r * r) + r + T.float32(1)
    return poly * T.reinterpret("float32", T.shift_left(T.Cast("int32", n) + 127, 23))


def rms_row_macro(d: int, eps: float, gamma: bool):
    """A TVMScript macro `rms_row(x, g, y, i)`: y[i] = x[i] · 1/√(Σ x[i]²/d + ε) (⊙ g when `gamma`; g is not read
    otherwise) for float32 buffers of rows of d."""
    from tvm.script import tirx as T

    eps_, inv_d = T.float32(float(np.float32(eps))), T.float32(float(np.float32(1.0 / d)))

    @T.macro
    def rms_row(x, g, y, i):
        total = T.alloc_buffer((1,), "float32", scope="global")
        total[0] = T.float32(0)
        for k in range(d):
            total[0] = total[0] + x[i, k] * x[i, k]
        total[0] = T.float32(1) / T.sqrt(total[0] * inv_d + eps_)
        for k in T.vectorized(d):
            if gamma:
                y[i, k] = g[k] * (x[i, k] * total[0])
            else:
                y[i, k] = x[i, k] * total[0]

    return rms_row


def rms_norm_func(m: int, d: int, eps: float, gamma: bool):
    """main(x f32 [m, d], [gamma f32 [d],] y f32 [m, d]): rows in parallel (one row: on the calling thread)."""
    from tvm.script import tirx as T

    rms_row, rows = rms_row_macro(d, eps, gamma), T.parallel if m > 1 else T.serial

    if gamma:

        @T.prim_func(s_tir=True)
        def func(x: T.Buffer((m, d), "float32"), g: T.Buffer((d,), "float32"), y: T.Buffer((m, d), "float32")):
            T.func_attr({"global_symbol": "main", "tir.noalias": True})
            for i in rows(m):
                rms_row(x, g, y, i)

        return func

    @T.prim_func(s_tir=True)
    def func(x: T.Buffer((m, d), "float32"), y: T.Buffer((m, d), "float32")):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        for i in rows(m):
            rms_row(x, None, y, i)

    return func


def rope_angle(freq: list[float], pos, i, j):
    """(pos[0] + i)·freq[j] as a TIR expression: a select chain of the constants (half a head ≤ 64 of them), so a
    kernel needs no table argument."""
    from tvm.script import tirx as T

    value = T.float32(freq[0])
    for f in range(1, len(freq)):
        value = T.Select(j == f, T.float32(freq[f]), value)
    return T.Cast("float32", pos[0] + i) * value


def rope_table_func(m: int, dim: int, inv_freq: np.ndarray):
    """main(pos i32 [1], cos f32 [m, dim/2], sin f32 [m, dim/2]): the rotary angles (pos + i)·inv_freq[j] of a
    step's rows, computed once and read by every layer's `rope`."""
    from tvm.script import tirx as T

    half = dim // 2
    freq = [float(f) for f in np.asarray(inv_freq, np.float32)]

    @T.prim_func(s_tir=True)
    def func(pos: T.Buffer((1,), "int32"), cos: T.Buffer((m, half), "float32"), sin: T.Buffer((m, half), "float32")):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        for i, j in T.grid(m, half):
            cos[i, j] = T.cos(rope_angle(freq, pos, i, j))
            sin[i, j] = T.sin(rope_angle(freq, pos, i, j))

    return func


def rope_rows_macro(heads: int, dim: int, offset: int | None = None):
    """A TVMScript macro `rope_rows(x, cos, sin, y, i)`: the rotary embedding of row i's heads, y[i, h] from
    x[i, h] (both [·, heads, dim]) with `rope_table`'s angles of row i. With an `offset`, x is a matrix [·, width]
    whose row holds the heads from column `offset` on (the q or k part of the fused q/k/v matmul's output)."""
    from tvm.script import tirx as T

    half = dim // 2

    def at(x, i, h, j):
        return x[i, h, j] if offset is None else x[i, offset + h * dim + j]

    @T.macro
    def rope_rows(x, cos, sin, y, i):
        for h in range(heads):
            for j in T.vectorized(half):
                y[i, h, j] = at(x, i, h, j) * cos[i, j] - at(x, i, h, j + half) * sin[i, j]
                y[i, h, j + half] = at(x, i, h, j + half) * cos[i, j] + at(x, i, h, j) * sin[i, j]

    return rope_rows


def qkv_rope_func(m: int, heads: int, kv_heads: int, dim: int):
    """main(qkv f32 [m, (heads + 2·kv_heads)·dim], cos f32 [m, dim/2], sin f32 [m, dim/2], q f32 [m, heads, dim],
    k f32 [m, kv_heads, dim], v f32 [m, kv_heads, dim]): the fused q/k/v matmul's output split into q, k and v, RoPE
    on q and k as it is read (`rope_rows_macro`: `rope_func`'s values bit for bit), rows in parallel; one kernel
    for the three slices and the two RoPE calls of a block without per-head transforms."""
    from tvm.script import tirx as T

    half, dq, dkv = dim // 2, heads * dim, kv_heads * dim
    rope_q, rope_k = rope_rows_macro(heads, dim, offset=0), rope_rows_macro(kv_heads, dim, offset=dq)
    rows = T.parallel if m > 1 else T.serial

    @T.prim_func(s_tir=True)
    def func(
        qkv: T.Buffer((m, dq + 2 * dkv), "float32"),
        cos: T.Buffer((m, half), "float32"),
        sin: T.Buffer((m, half), "float32"),
        q: T.Buffer((m, heads, dim), "float32"),
        k: T.Buffer((m, kv_heads, dim), "float32"),
        v: T.Buffer((m, kv_heads, dim), "float32"),
    ):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        for i in rows(m):
            rope_q(qkv, cos, sin, q, i)
            rope_k(qkv, cos, sin, k, i)
            for h in range(kv_heads):
                for j in T.vectorized(dim):
                    v[i, h, j] = qkv[i, dq + dkv + h * dim + j]

    return func


def rope_func(m: int, heads: int, dim: int):
    """main(x f32 [m, heads, dim], cos f32 [m, dim/2], sin f32 [m, dim/2], y f32 [m, heads, dim]): Llama's rotary
    embedding (rotate_half form) with `rope_table`'s angles."""
    from tvm.script import tirx as T

    half, rope_rows = dim // 2, rope_rows_macro(heads, dim)

    @T.prim_func(s_tir=True)
    def func(
        x: T.Buffer((m, heads, dim), "float32"),
        cos: T.Buffer((m, half), "float32"),
        sin: T.Buffer((m, half), "float32"),
        y: T.Buffer((m, heads, dim), "float32"),
    ):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        for i in T.parallel(m):
            rope_rows(x, cos, sin, y, i)

    return func


def rope_kronecker_func(m: int, heads: int, dim: int, a: int, b: int):
    """main(x f32 [m, heads, dim], cos, sin, A f32 [a, a], B f32 [b, b], y f32 [m·heads, dim]): `rope_func` and then
    the per-head Kronecker transform of its rows (`kronecker_macro` over m·heads rows of a·b = dim) in one kernel,
    the roped rows in a scratch buffer: the values of the two kernels, bit for bit."""
    from tvm.script import tirx as T

    if a * b != dim:
        raise ValueError(f"a Kronecker step of {a} x {b} does not transform heads of {dim}")
    half, rope_rows, kronecker = dim // 2, rope_rows_macro(heads, dim), kronecker_macro(m * heads, a, b)
    rows = T.parallel if m > 1 else T.serial

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
        for i in rows(m):
            rope_rows(x, cos, sin, by_head, i)
        kronecker(roped, fa, fb, y)

    return func


def _block_width(b: int, lanes: int = 8, most: int = 64) -> tuple[int, int]:
    """(vector lanes, columns per register block) for rows of b columns: the widest lanes ≤ `lanes` dividing b, and
    the largest multiple of them ≤ `most` dividing b (a block's accumulators stay in registers)."""
    lanes = next(n for n in (lanes, 4, 2, 1) if b % n == 0)
    return lanes, max(w for w in range(lanes, min(b, most) + 1, lanes) if b % w == 0)


def signed_hadamard(b: np.ndarray) -> np.ndarray | None:
    """s when B = diag(s)·H for the Sylvester Hadamard matrix H (entries ±1) of B's power-of-two size ≥ 8, exactly in
    float32 (a randomized Hadamard rotation: s = ±1/√b); else None. Then X·B = (X ⊙ s)·H: `hadamard_table`."""
    b = np.asarray(b, np.float32)
    n = b.shape[0]
    if n < 8 or n & (n - 1) or b.shape != (n, n):
        return None
    signs = b[:, 0].copy()
    return signs if np.array_equal(b, signs[:, None] * _sylvester(n)) else None


def _sylvester(n: int) -> np.ndarray:
    """The n × n Sylvester Hadamard matrix (entries ±1), float32."""
    from scipy.linalg import hadamard

    return hadamard(n).astype(np.float32)


def hadamard_table(signs: np.ndarray) -> np.ndarray:
    """The `fb` argument of a `kronecker_macro(..., hadamard=True)`: the signs s [b], then H₈ row by row [64]."""
    return np.concatenate([np.asarray(signs, np.float32), _sylvester(8).reshape(-1)])


def kronecker_macro(rows: int, a: int, b: int, hadamard: bool = False):
    """A TVMScript macro `kronecker(x, fa, fb, y)`: y_m = Aᵀ X_m B for every row of x [rows, a·b] (any float32
    buffers), as `kronecker_func` computes it; a kernel that makes its rows first (SiLU·up) or quantizes them after
    calls it between the two.

    hadamard=True (B = diag(s)·H, `signed_hadamard`; fb is `hadamard_table`(s) [b + 64]): X_m B by the fast
    Walsh–Hadamard transform, on the calling thread: each product x·s is the dense form's x·B[l, j] (B[l, j] = ±s_l
    exactly), the first three butterfly stages as one H₈ product per 8 columns (±1 weights: exact), then the
    stages of 8 … b/2 columns as vector butterflies (u + v, u − v): b·log₂b additions for a row of b instead of b²
    products and sums; only the order of the sums differs from the dense form."""
    from tvm.script import tirx as T

    lanes, width = _block_width(b)
    blocks, vectors = b // width, width // lanes
    f32v = f"float32x{lanes}"
    tasks = T.parallel if rows * a * b * (a + b) >= PARALLEL_MACS else T.serial
    if hadamard:
        if b < 8 or b & (b - 1):
            raise ValueError(f"the fast Hadamard transform takes a power of two of at least 8 columns, not {b}")
        tasks = T.parallel if rows * a * b * a >= PARALLEL_MACS else T.serial  # the left side's products alone
        rows_of = T.parallel if rows > 1 else T.serial

        def low(k, stage, pair):
            """The first column of butterfly `pair`'s vector u in stage `stage` (h = 2^stage) of factor row k."""
            per_block = 1 << (stage - 3)  # vectors in half a block of 2h columns
            return k * b + pair // per_block * (2 << stage) + pair % per_block * 8

        @T.macro
        def butterflies(x, fs, out, row, k):
            """out[row, k·b : (k + 1)·b] = (x[row, k·b : (k + 1)·b] ⊙ s) · H."""
            acc = T.alloc_buffer((2, 8), "float32", scope="global")
            for c in range(b // 8):
                acc[0, T.ramp(0, 1, 8)] = T.broadcast(T.float32(0), 8)
                for l in T.unroll(8):  # noqa: E741
                    acc[0, T.ramp(0, 1, 8)] = acc.vload([0, 0], "float32x8") + T.broadcast(
                        x[row, k * b + c * 8 + l] * fs[c * 8 + l], 8
                    ) * fs.vload([b + l * 8], "float32x8")
                out[row, T.ramp(k * b + c * 8, 1, 8)] = acc.vload([0, 0], "float32x8")
            for stage in range(3, b.bit_length() - 1):
                for pair in range(b // 16):  # 8-column vectors u (at p) and v (at p + h), h = 2^stage
                    acc[0, T.ramp(0, 1, 8)] = out.vload([row, low(k, stage, pair)], "float32x8")
                    acc[1, T.ramp(0, 1, 8)] = out.vload([row, low(k, stage, pair) + (1 << stage)], "float32x8")
                    out[row, T.ramp(low(k, stage, pair), 1, 8)] = acc.vload([0, 0], "float32x8") + acc.vload(
                        [1, 0], "float32x8"
                    )
                    out[row, T.ramp(low(k, stage, pair) + (1 << stage), 1, 8)] = acc.vload(
                        [0, 0], "float32x8"
                    ) - acc.vload([1, 0], "float32x8")

    def at(task, v):
        """(row, the flat index of lane 0 of vector v) of a stage's task: row, k (or i), column block."""
        return task // (a * blocks), task // blocks % a * b + task % blocks * width + v * lanes

    @T.macro
    def right_side(x, fb, out, fa, task):
        """out's block of task = X_m[k] · B (times A[0, 0] when a = 1: `fa` not None)."""
        acc = T.alloc_buffer((vectors, lanes), "float32", scope="global")
        for v in T.unroll(vectors):
            acc[v, T.ramp(0, 1, lanes)] = T.broadcast(T.float32(0), lanes)
        for l in range(b):  # noqa: E741
            for v in T.unroll(vectors):
                acc[v, T.ramp(0, 1, lanes)] = acc.vload([v, 0], f32v) + T.broadcast(
                    x[task // (a * blocks), task // blocks % a * b + l], lanes
                ) * fb.vload([l, task % blocks * width + v * lanes], f32v)
        for v in T.unroll(vectors):
            if fa is None:
                out[at(task, v)[0], T.ramp(at(task, v)[1], 1, lanes)] = acc.vload([v, 0], f32v)
            else:
                out[at(task, v)[0], T.ramp(at(task, v)[1], 1, lanes)] = acc.vload([v, 0], f32v) * T.broadcast(
                    fa[0, 0], lanes
                )

    if a == 1 and not hadamard:

        @T.macro
        def single(x, fa, fb, y):
            for task in tasks(rows * blocks):
                right_side(x, fb, y, fa, task)

        return single

    @T.macro
    def right_stage(x, fb, right):
        if hadamard:
            for row in rows_of(rows):
                for k in range(a):
                    butterflies(x, fb, right, row, k)
        else:
            for task in tasks(rows * a * blocks):
                right_side(x, fb, right, None, task)

    @T.macro
    def kronecker(x, fa, fb, y):
        right = T.alloc_buffer((rows, a * b), "float32")
        right_stage(x, fb, right)
        for task in tasks(rows * a * blocks):
            acc = T.alloc_buffer((vectors, lanes), "float32", scope="global")
            for v in T.unroll(vectors):
                acc[v, T.ramp(0, 1, lanes)] = T.broadcast(T.float32(0), lanes)
            for k in range(a):
                for v in T.unroll(vectors):
                    acc[v, T.ramp(0, 1, lanes)] = acc.vload([v, 0], f32v) + right.vload(
                        [task // (a * blocks), k * b + task % blocks * width + v * lanes], f32v
                    ) * T.broadcast(fa[k, task // blocks % a], lanes)
            for v in T.unroll(vectors):
                y[at(task, v)[0], T.ramp(at(task, v)[1], 1, lanes)] = acc.vload([v, 0], f32v)

    return kronecker


def kronecker_func(rows: int, a: int, b: int, hadamard: bool = False):
    """main(x f32 [rows, a·b], A f32 [a, a], B f32 [b, b], y f32 [rows, a·b]): y_m = Aᵀ X_m B per row, in two
    stages: R = X_m B (R[k, j] = Σ_l X[k, l]·B[l, j], over l in order), then y[i, j] = Σ_k R[k, j]·A[k, i] (over k in
    order), each element summed in the reference's order. Each stage's tasks are (row, k or i, block of ≤ 64
    columns) triples, in parallel (below `PARALLEL_MACS` on the calling thread), so one row (a decode step) spreads
    over the threads; a block's sums stay in vector registers while the loop over l (or k) streams B's (or R's)
    rows. With a = 1 (a per-head transform) the second stage is y = R·A[0, 0] (the sum of one product, as exact as
    the reference's), the first stage's epilogue: one loop. hadamard=True: B = diag(s)·H given as
    `hadamard_table`(s) [b + 64], the first stage by the fast transform (`kronecker_macro`)."""
    from tvm.script import tirx as T

    kronecker = kronecker_macro(rows, a, b, hadamard)

    @T.prim_func(s_tir=True)
    def func(
        x: T.Buffer((rows, a * b), "float32"),
        fa: T.Buffer((a, a), "float32"),
        fb: T.Buffer((b + 64,) if hadamard else (b, b), "float32"),
        y: T.Buffer((rows, a * b), "float32"),
    ):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        kronecker(x, fa, fb, y)

    return func


def channel_scale_func(m: int, d: int):
    """main(x f32 [m, d], c f32 [d], y f32 [m, d])."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def func(x: T.Buffer((m, d), "float32"), c: T.Buffer((d,), "float32"), y: T.Buffer((m, d), "float32")):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        for i in range(m):
            for k in T.vectorized(d):
                y[i, k] = x[i, k] * c[k]

    return func


def silu_row_macro(d: int):
    """A TVMScript macro `silu_row(gu, y, i)`: y[i] = g · 1/(1 + e^(−g)) · u for the halves (g, u) of gu[i] (2d), in
    8-lane vectors (one loop vectorized over all d lanes makes LLVM split a 1536-lane vector of `fast_exp`'s steps,
    several times slower)."""
    from tvm.script import tirx as T

    lanes = next(n for n in (8, 4, 2, 1) if d % n == 0)

    @T.macro
    def silu_row(gu, y, i):
        for k0 in range(d // lanes):
            for k1 in T.vectorized(lanes):
                y[i, k0 * lanes + k1] = (
                    gu[i, k0 * lanes + k1]
                    * (T.float32(1) / (T.float32(1) + fast_exp(-gu[i, k0 * lanes + k1])))
                    * gu[i, d + k0 * lanes + k1]
                )

    return silu_row


def silu_mul_func(m: int, d: int):
    """main(gu f32 [m, 2d] (gate, then up), y f32 [m, d]): `silu_row_macro` per row, rows in parallel."""
    from tvm.script import tirx as T

    silu_row, rows = silu_row_macro(d), T.parallel if m > 1 else T.serial

    @T.prim_func(s_tir=True)
    def func(gu: T.Buffer((m, 2 * d), "float32"), y: T.Buffer((m, d), "float32")):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        for i in rows(m):
            silu_row(gu, y, i)

    return func


def cache_write_func(
    m: int,
    kv_heads: int,
    dim: int,
    capacity: int,
    bits: int | None,
    symmetric: bool,
    clip_ratio: float,
    as_codes: bool = True,
):
    """Float cache (bits None): main(new f32 [m, kv_heads, dim], pos i32 [1], cache f32 [kv_heads, capacity, dim]).
    Quantized: main(new, pos, codes i8 [kv_heads, capacity, dim], scale f32 [kv_heads, capacity],
    zero f32 [kv_heads, capacity]); the codes as `QuantSpec.per_token` gives them (unsigned codes of an
    asymmetric quantizer stored minus 128), zero is the float zero point (0 when symmetric). With `as_codes` False
    (a float cache that also holds an intact-kv prefix's float values): main(new, pos, cache f32), the quantized
    values written dequantized, (q − z)·s, as the artifact's fake quantization computes them. Row i goes to
    position pos + i, in place."""
    from tvm.script import tirx as T

    if bits is None:

        @T.prim_func(s_tir=True)
        def write(
            new: T.Buffer((m, kv_heads, dim), "float32"),
            pos: T.Buffer((1,), "int32"),
            cache: T.Buffer((kv_heads, capacity, dim), "float32"),
        ):
            T.func_attr({"global_symbol": "main", "tir.noalias": True})
            for i, h, j in T.grid(m, kv_heads, dim):
                cache[h, pos[0] + i, j] = new[i, h, j]

        return write

    ratio, tiny = T.float32(float(np.float32(clip_ratio))), T.float32(float(TOKEN_MIN_SCALE))
    top = T.float32(float(2 ** (bits - 1) - 1 if symmetric else 2**bits - 1))

    def clipped(value, lo, hi):
        return T.max(T.min(value, hi), lo)

    if not as_codes:

        @T.prim_func(s_tir=True)
        def write_values(
            new: T.Buffer((m, kv_heads, dim), "float32"),
            pos: T.Buffer((1,), "int32"),
            cache: T.Buffer((kv_heads, capacity, dim), "float32"),
        ):
            T.func_attr({"global_symbol": "main", "tir.noalias": True})
            for i in T.parallel(m):
                row = T.alloc_buffer((4,), "float32", scope="global")  # lo, hi, scale, zero point
                for h in range(kv_heads):
                    row[0] = T.float32(0)
                    row[1] = T.float32(0)
                    for j in range(dim):
                        if symmetric:
                            row[1] = T.max(row[1], T.abs(new[i, h, j]))
                        else:
                            row[0] = T.min(row[0], new[i, h, j])
                            row[1] = T.max(row[1], new[i, h, j])
                    if symmetric:
                        row[2] = T.max((row[1] * ratio) / top, tiny)
                        for j in range(dim):
                            cache[h, pos[0] + i, j] = clipped(T.nearbyint(new[i, h, j] / row[2]), -top, top) * row[2]
                    else:
                        row[2] = T.max((row[1] * ratio - row[0] * ratio) / top, tiny)
                        row[3] = clipped(T.nearbyint(-(row[0] * ratio) / row[2]), T.float32(0), top)
                        for j in range(dim):
                            cache[h, pos[0] + i, j] = (
                                clipped(T.nearbyint(new[i, h, j] / row[2]) + row[3], T.float32(0), top) - row[3]
                            ) * row[2]

        return write_values

    @T.prim_func(s_tir=True)
    def write(
        new: T.Buffer((m, kv_heads, dim), "float32"),
        pos: T.Buffer((1,), "int32"),
        codes: T.Buffer((kv_heads, capacity, dim), "int8"),
        scale: T.Buffer((kv_heads, capacity), "float32"),
        zero: T.Buffer((kv_heads, capacity), "float32"),
    ):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        for i in T.parallel(m):
            bounds = T.alloc_buffer((2,), "float32", scope="global")
            for h in range(kv_heads):
                bounds[0] = T.float32(0)
                bounds[1] = T.float32(0)
                for j in range(dim):
                    if symmetric:
                        bounds[1] = T.max(bounds[1], T.abs(new[i, h, j]))
                    else:
                        bounds[0] = T.min(bounds[0], new[i, h, j])
                        bounds[1] = T.max(bounds[1], new[i, h, j])
                if symmetric:
                    scale[h, pos[0] + i] = T.max((bounds[1] * ratio) / top, tiny)
                    zero[h, pos[0] + i] = T.float32(0)
                    for j in range(dim):
                        codes[h, pos[0] + i, j] = T.Cast(
                            "int8", clipped(T.nearbyint(new[i, h, j] / scale[h, pos[0] + i]), -top, top)
                        )
                else:
                    scale[h, pos[0] + i] = T.max((bounds[1] * ratio - bounds[0] * ratio) / top, tiny)
                    zero[h, pos[0] + i] = clipped(
                        T.nearbyint(-(bounds[0] * ratio) / scale[h, pos[0] + i]), T.float32(0), top
                    )
                    for j in range(dim):
                        codes[h, pos[0] + i, j] = T.Cast(
                            "int8",
                            T.Cast(
                                "int32",
                                clipped(
                                    T.nearbyint(new[i, h, j] / scale[h, pos[0] + i]) + zero[h, pos[0] + i],
                                    T.float32(0),
                                    top,
                                ),
                            )
                            - 128,
                        )

    return write


def attention_func(
    m: int, heads: int, kv_heads: int, dim: int, capacity: int, score_scale: float, quantized: bool, shift: int
):
    """Float cache: main(q f32 [m, heads, dim], pos i32 [1], k f32 [kvh, cap, dim], v f32 [kvh, cap, dim],
    out f32 [m, heads·dim]). Quantized: k and v each as (codes i8, scale f32 [kvh, cap], zero f32 [kvh, cap]),
    K̂ = (codes + shift − zero)·scale (shift 128 for asymmetric codes stored minus 128). Query row i (position
    pos + i) attends positions 0 … pos + i, so a chunk of m new tokens is causal within itself; (row, head)
    pairs in parallel. One row (a decode step) is `split_attention`: the KV heads' positions in parts, in parallel."""
    from tvm.script import tirx as T

    group, c = heads // kv_heads, T.float32(float(np.float32(score_scale)))
    lanes = next(n for n in (16, 8, 4, 2, 1) if dim % n == 0)

    @T.macro
    def fold(part):
        """part[0] ← the sum of the `lanes` partial sums, halving the vector each time (a tree, not a chain)."""
        if lanes >= 16:
            part[T.ramp(0, 1, 8)] = part[T.ramp(0, 1, 8)] + part[T.ramp(8, 1, 8)]
        if lanes >= 8:
            part[T.ramp(0, 1, 4)] = part[T.ramp(0, 1, 4)] + part[T.ramp(4, 1, 4)]
        if lanes >= 4:
            part[T.ramp(0, 1, 2)] = part[T.ramp(0, 1, 2)] + part[T.ramp(2, 1, 2)]
        if lanes >= 2:
            part[0] = part[0] + part[1]

    @T.macro
    def attend(q, pos, key, value, out, i, h):
        scores = T.alloc_buffer((capacity,), "float32", scope="global")
        part = T.alloc_buffer((lanes,), "float32", scope="global")
        peak = T.alloc_buffer((2,), "float32", scope="global")  # max score, then the sum of exponentials
        peak[0] = T.float32(-3.0e38)
        for t in range(pos[0] + i + 1):
            for jj in T.vectorized(lanes):
                part[jj] = T.float32(0)
            for j0 in range(dim // lanes):
                for jj in T.vectorized(lanes):
                    part[jj] = part[jj] + q[i, h, j0 * lanes + jj] * key(h // group, t, j0 * lanes + jj)
            fold(part)
            scores[t] = part[0] * c
            peak[0] = T.max(peak[0], scores[t])
        for t0 in range((pos[0] + i + 1) // 16):
            for tt in T.vectorized(16):
                scores[t0 * 16 + tt] = fast_exp(scores[t0 * 16 + tt] - peak[0])
        for t in range((pos[0] + i + 1) // 16 * 16, pos[0] + i + 1):
            scores[t] = fast_exp(scores[t] - peak[0])
        peak[1] = T.float32(0)
        for t in range(pos[0] + i + 1):
            peak[1] = peak[1] + scores[t]
        for t in range(pos[0] + i + 1):
            scores[t] = scores[t] / peak[1]
        for j in T.vectorized(dim):
            out[i, h * dim + j] = T.float32(0)
        for t in range(pos[0] + i + 1):
            for j in T.vectorized(dim):
                out[i, h * dim + j] = out[i, h * dim + j] + scores[t] * value(h // group, t, j)

    if m == 1 and dim % 8 == 0:
        split = split_attention_macro(heads, kv_heads, dim, capacity, score_scale)

        @T.macro
        def rows(q, pos, key, value, out, key8):
            split(q, pos, key8, value, out)

    else:

        @T.macro
        def rows(q, pos, key, value, out, key8):
            for task in T.parallel(m * heads):
                attend(q, pos, key, value, out, task // heads, task % heads)

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
            rows(
                q,
                pos,
                lambda g, t, j: k[g, t, j],
                lambda g, t, j: v[g, t, j],
                out,
                lambda g, t, j0: k[g, t, T.ramp(j0 * 8, 1, 8)],
            )

        return func

    def dequant(codes, scale, zero):
        return lambda g, t, j: (T.Cast("float32", T.Cast("int32", codes[g, t, j]) + shift) - zero[g, t]) * scale[g, t]

    def dequant8(codes, scale, zero):
        """K̂[g, t, 8·j0 : 8·j0 + 8] as float32x8, each lane as `dequant` computes it."""
        return lambda g, t, j0: (
            (
                T.Cast("float32x8", T.Cast("int32x8", codes[g, t, T.ramp(j0 * 8, 1, 8)]) + T.broadcast(shift, 8))
                - T.broadcast(zero[g, t], 8)
            )
            * T.broadcast(scale[g, t], 8)
        )

    @T.prim_func(s_tir=True)
    def func(
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
        rows(q, pos, dequant(kc, ks, kz), dequant(vc, vs, vz), out, dequant8(kc, ks, kz))

    return func


def split_attention_macro(heads: int, kv_heads: int, dim: int, capacity: int, score_scale: float):
    """A macro `split(q, pos, key, value, out)`: one query row's grouped-query attention over positions 0 … pos
    (key(g, t, j0): the cache's K̂[g, t, 8·j0 : 8·j0 + 8] as one float32x8; value(g, t, j): V̂), split into
    ATTENTION_PARTS runs of positions per KV head, the (KV head, run) tasks in parallel, each reading its keys and
    values once for the group's query heads:

        per task, per head h:  m = max_t s_t,  l = Σ_t e^(s_t − m),  o = Σ_t e^(s_t − m)·V̂_t    (s_t = c·q_h·K̂_t)
        then per head:         M = max m,  out = Σ_runs e^(m − M)·o / Σ_runs e^(m − M)·l

    the same softmax-weighted sum as one pass over the positions, in another float order (an empty run has
    m = −3e38, l = 0, o = 0: its weight underflows and its terms are zero). A score is its dim/8 vector products
    summed as a tree and folded 8 → 4 → 2 → 1 lanes in registers (dim a multiple of 8)."""
    from tvm.script import tirx as T

    if dim % 8:
        raise ValueError(f"one row's attention takes heads of a multiple of 8 elements, not {dim}")
    group, parts, c = heads // kv_heads, ATTENTION_PARTS, T.float32(float(np.float32(score_scale)))
    run = -(-capacity // parts)

    def score(q, key, g, h, t):
        """c · q[0, g·group + h] · K̂[g, t] as one float32 expression: products of 8 lanes, summed pairwise, folded."""
        terms = [q[0, g * group + h, T.ramp(j0 * 8, 1, 8)] * key(g, t, j0) for j0 in range(dim // 8)]
        while len(terms) > 1:
            terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
        return terms[0]

    def fold(v, lanes):
        """The sum of a float32 vector's lanes, halving it each time."""
        while lanes > 1:
            lanes //= 2
            v = T.Shuffle([v], list(range(lanes))) + T.Shuffle([v], list(range(lanes, 2 * lanes)))
        return v

    @T.macro
    def split(q, pos, key, value, out):
        top = T.alloc_buffer((kv_heads * parts, group), "float32")  # per task and head: m
        total = T.alloc_buffer((kv_heads * parts, group), "float32")  # l
        partial = T.alloc_buffer((kv_heads * parts, group, dim), "float32")  # o
        for task in T.parallel(kv_heads * parts):
            scores = T.alloc_buffer((group, run), "float32", scope="global")
            g = task // parts
            chunk = (pos[0] + parts) // parts  # ⌈(pos + 1) / parts⌉ positions a run
            begin = task % parts * chunk
            length = T.max(T.min(pos[0] + 1 - begin, chunk), 0)
            for t in range(length):
                for h in T.unroll(group):
                    products = score(q, key, g, h, begin + t)
                    scores[h, t] = fold(products, 8) * c
            for h in range(group):
                top[task, h] = T.float32(-3.0e38)
                for t in range(length):
                    top[task, h] = T.max(top[task, h], scores[h, t])
                for t0 in range(length // 16):
                    for tt in T.vectorized(16):
                        scores[h, t0 * 16 + tt] = fast_exp(scores[h, t0 * 16 + tt] - top[task, h])
                for t in range(length // 16 * 16, length):
                    scores[h, t] = fast_exp(scores[h, t] - top[task, h])
                total[task, h] = T.float32(0)
                for t in range(length):
                    total[task, h] = total[task, h] + scores[h, t]
                for j in T.vectorized(dim):
                    partial[task, h, j] = T.float32(0)
                for t in range(length):
                    for j in T.vectorized(dim):
                        partial[task, h, j] = partial[task, h, j] + scores[h, t] * value(g, begin + t, j)
        for hq in range(heads):
            weights = T.alloc_buffer((parts + 2,), "float32", scope="global")  # the runs' weights, M, the sum
            weights[parts] = T.float32(-3.0e38)
            for r in range(parts):
                weights[parts] = T.max(weights[parts], top[hq // group * parts + r, hq % group])
            weights[parts + 1] = T.float32(0)
            for r in range(parts):
                weights[r] = fast_exp(top[hq // group * parts + r, hq % group] - weights[parts])
                weights[parts + 1] = weights[parts + 1] + weights[r] * total[hq // group * parts + r, hq % group]
            for j in T.vectorized(dim):
                out[0, hq * dim + j] = T.float32(0)
            for r in range(parts):
                for j in T.vectorized(dim):
                    out[0, hq * dim + j] = (
                        out[0, hq * dim + j] + weights[r] * partial[hq // group * parts + r, hq % group, j]
                    )
            for j in T.vectorized(dim):
                out[0, hq * dim + j] = out[0, hq * dim + j] / weights[parts + 1]

    return split


def gemv_columns(n: int) -> int:
    """N rounded up to whole column panels of `GEMV_BLOCKS` × `GEMV_LANES`."""
    return -(-n // (GEMV_LANES * GEMV_BLOCKS)) * GEMV_LANES * GEMV_BLOCKS


def pack_gemv_weight(weight: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """[K, N] → [Np/64, K, 4, 16] of `dtype` (float32; float16: rounded to nearest; int8: codes as they are),
    Np = `gemv_columns`, columns zero-padded: a panel's 4 column tiles side by side at every k, so each task of
    `gemv_func` reads one contiguous range."""
    k, n = weight.shape
    np_ = gemv_columns(n)
    padded = np.zeros((k, np_), dtype)
    padded[:, :n] = weight
    panels = np_ // (GEMV_LANES * GEMV_BLOCKS)
    return np.ascontiguousarray(padded.reshape(k, panels, GEMV_BLOCKS, GEMV_LANES).transpose(1, 0, 2, 3))


def quantize_gemv_weight(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes of a float [K, N] weight with one scale per column (over K):
    s[n] = max_k |W[k, n]| / 127 (1 for an all-zero column), q = rint(W / s) ∈ [−127, 127]. Returns (q int8
    [K, N], s float32 [`gemv_columns`(N)], padding 0); W ≈ q · s."""
    weight = np.asarray(weight, np.float32)
    peak = np.abs(weight).max(axis=0)
    scale = np.where(peak > 0, peak / np.float32(127), np.float32(1)).astype(np.float32)
    codes = np.clip(np.rint(weight / scale), -127, 127).astype(np.int8)
    padded = np.zeros(gemv_columns(weight.shape[1]), np.float32)
    padded[: weight.shape[1]] = scale
    return codes, padded


def gemv_func(k: int, n: int, dtype: str = "float32"):
    """main(x f32 [1, k], w [Np/64, k, 4, 16] of `dtype` (`pack_gemv_weight`), [scale f32 [Np],] y f32 [1, Np]),
    Np = `gemv_columns`: panels of 4 column tiles in parallel, 16-lane vector accumulators; float16 weights and int8
    codes are widened to float32 in registers; int8 codes (`quantize_gemv_weight`) take the scale argument, applied
    once to each column's sum."""
    from tvm.script import tirx as T

    if dtype not in ("float32", "float16", "int8"):
        raise ValueError(f"the GEMV weight is float32, float16 or int8, not {dtype}")
    lanes, blocks = GEMV_LANES, GEMV_BLOCKS
    panels = gemv_columns(n) // (lanes * blocks)
    f32v = f"float32x{lanes}"

    @T.macro
    def columns(x, w, scale, y, task):
        """y's columns of `task` (its panel's column tiles): the sums over k, times the scales when given."""
        acc = T.alloc_buffer((blocks, lanes), "float32", scope="global")
        for b in T.unroll(blocks):
            acc[b, T.ramp(0, 1, lanes)] = T.broadcast(T.float32(0), lanes)
        for kk in range(k):
            for b in T.unroll(blocks):
                acc[b, T.ramp(0, 1, lanes)] = acc[b, T.ramp(0, 1, lanes)] + T.broadcast(x[0, kk], lanes) * T.Cast(
                    f32v, w[task, kk, b, T.ramp(0, 1, lanes)]
                )
        for b in T.unroll(blocks):
            if scale is None:
                y[0, T.ramp((task * blocks + b) * lanes, 1, lanes)] = acc[b, T.ramp(0, 1, lanes)]
            else:
                y[0, T.ramp((task * blocks + b) * lanes, 1, lanes)] = (
                    acc[b, T.ramp(0, 1, lanes)] * scale[T.ramp((task * blocks + b) * lanes, 1, lanes)]
                )

    if dtype == "int8":

        @T.prim_func(s_tir=True)
        def scaled(
            x: T.Buffer((1, k), "float32"),
            w: T.Buffer((panels, k, blocks, lanes), dtype),
            scale: T.Buffer((panels * blocks * lanes,), "float32"),
            y: T.Buffer((1, panels * blocks * lanes), "float32"),
        ):
            T.func_attr({"global_symbol": "main", "tir.noalias": True})
            for task in T.parallel(panels):
                columns(x, w, scale, y, task)

        return scaled

    @T.prim_func(s_tir=True)
    def func(
        x: T.Buffer((1, k), "float32"),
        w: T.Buffer((panels, k, blocks, lanes), dtype),
        y: T.Buffer((1, panels * blocks * lanes), "float32"),
    ):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        for task in T.parallel(panels):
            columns(x, w, None, y, task)

    return func
