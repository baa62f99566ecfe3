"""The LLM's linear layer with 4-bit packed weights (`qcompile.intops.int4_matmul`) on x86, exact: one kernel
for decode (M = 1, a GEMV) and prefill (M = tokens), reading two weights per byte.

    out[i, n] = s_a[i] · Σ_g s[g, n] · (Σ_{k∈g} q[k, n]·a[i, k] − z[g, n]·Σ_{k∈g} a[i, k] − z_a[i]·W_g[n])

Why the weights are the *unsigned* operand: vpdpbusd multiplies 4 unsigned bytes by 4 signed bytes and
adds them to an int32 lane. The 4-bit codes q ∈ [0, 15] are unsigned bytes once their nibble is masked out;
the int8 activation codes are the signed bytes, used as they are (no shift). The zero points move out of
the inner loop: −z·Σa (Σa per row and group, `row_group_sums`, computed first in the same kernel) and
−z_a·W_g (W_g = Σ(q − z), `weight_group_sums`, packed at build time; only when activations have a zero
point). So the inner loop is load, mask, shift, and two vpdpbusd per 128 weights.

Packing (`pack_weight`): with column tile j = n // lanes, byte [j // P, k8, j % P, n % lanes, t] holds
q[8·k8 + t, n] in its low nibble and q[8·k8 + 4 + t, n] in its high nibble, so one vector load (lanes × 4 bytes)
gives, masked, the 4 k-values × `lanes` columns of one vpdpbusd against the broadcast a[i, 8·k8 : 8·k8 + 4], and
shifted right by 4 those of a second one against a[i, 8·k8 + 4 : 8·k8 + 8]. The nibbles are unpacked in
registers, never in memory. A panel of P column tiles (`PANEL`: the decode tile's column blocks) lies side by
side at every k step, so a decode task reads one contiguous range and the two threads of a step two long streams
that the hardware prefetchers follow; with P = 1 a task of c column blocks reads c separate streams of K/8
vectors (2.3 KB at K = 576), too short for them.
Flavours (`FLAVOURS`, named as `artifact.kernel_flavour` names them): `avx512vnni` (zmm, 16 lanes) and
`avxvnni` (ymm, 8 lanes) use vpdpbusd; `llvm` (AVX2 without VNNI, ymm, 8 lanes) uses vpmaddubsw, which
sums pairs of u8·s8 products in *saturating* int16, then vpmaddwd by ones into int32 lanes: the same 4-product
sums as vpdpbusd. It saturates only above 2^15 − 1; a pair here is at most 2·15·128 = 3840 because one
operand is a 4-bit code (the trap that makes it wrong for full-range 8-bit weights, `int_gemm.py`, does not
arise). So up to 8 of those pair sums add in int16 without overflow (8·3840 = 30,720 ≤ 2^15 − 1): the AVX2 flavour
sums the vpmaddubsw results of up to `SHORT_STEPS` packed vectors (2 per vector: its low and high nibbles) with
vpaddw in int16 accumulators, and widens them with one vpmaddwd per accumulator after that, a quarter of the
vpmaddwd of widening every pair sum; the int32 sums are the same, exactly.

8-bit weights (`bits=8`, codes q ∈ [0, 255]) go through the same kernel: byte [n // lanes, k4, n % lanes, t] holds
q[4·k4 + t, n], one vector load is one vpdpbusd's operand as it is (exact: 4·255·128 fits an int32 lane). On AVX2
a pair of u8·s8 products reaches 2·255·128 > 2^15 − 1, so the byte is split into its nibbles in registers,
q = 16·hi + lo, and each goes through vpmaddubsw (pairs ≤ 3840) and vpmaddwd, by ones for lo and by sixteens for
hi: the same int32 sums, exact, at twice the multiply work of a 4-bit weight.

Schedule (written out in TIR, no tensorize): tasks are (column tile, row tile) pairs, column tile
outermost so that a thread keeps one weight panel in L1 while its row tiles pass; each task holds
rows × col_blocks int32 accumulators (reset per group) and as many float32 ones (the group epilogue
adds s·float(acc) in group order, as the reference does). Rows past M read the last row and are not
written. K and the group must be multiples of 8; the output is [M, N padded to lanes].

The accumulators are buffers of scope "global" allocated inside the parallel task, which TVM lowers to
a stack `alloca` when it is smaller than 1024 bytes (so a tile holds fewer than 16 zmm accumulators);
LLVM then keeps them in registers. With scope "local", or at 1024 bytes, TVM 0.27 allocates them with
TVMBackendAllocWorkspace, and LLVM must store every vpdpbusd result back to that memory (tests check the
IR has no workspace allocation).
"""

from __future__ import annotations

import numpy as np

from qcompile.intops.int4_matmul import check_codes, weight_group_sums

__all__ = [
    "pack_weight",
    "pack_group_params",
    "int4_matmul_func",
    "pick_col_blocks",
    "padded_columns",
    "PANEL",
    "flavours_for",
    "FLAVOURS",
    "TILES",
    "STEP",
]

STEP = 8  # k-values one packed vector of 4-bit codes covers: 4 in the low nibbles, 4 in the high ones
STEPS = {4: STEP, 8: 4}  # … by weight bits (one 8-bit code a byte)
# (rows, col_blocks) per flavour: decode (one row) and prefill register tiles. AVX2's prefill tile is 2 × 4: its
# int16 and int32 accumulators (2 · 8 ymm) leave registers for the codes and broadcasts (4 × 4 would spill them)
TILES = {
    "avx512vnni": {"decode": (1, 2), "prefill": (4, 3)},
    "avxvnni": {"decode": (1, 4), "prefill": (4, 4)},
    "llvm": {"decode": (1, 4), "prefill": (2, 4)},
}
FLAVOURS = {"avx512vnni": 16, "avxvnni": 8, "llvm": 8}  # flavour → int32 lanes
# column tiles per packed panel, by flavour: the decode tile's column blocks, so that a decode task streams one
# contiguous range
PANEL = {flavour: tiles["decode"][1] for flavour, tiles in TILES.items()}
SHORT_STEPS = 4  # AVX2, 4-bit codes: packed vectors (2 vpmaddubsw each) summed in int16 before widening; ≤ 4
STACK_BYTES = 1024  # TVM puts a constant-size allocation on the stack only below this many bytes
_VPDPBUSD = {16: "llvm.x86.avx512.vpdpbusd.512", 8: "llvm.x86.avx512.vpdpbusd.256"}


def flavours_for(features) -> list[str]:
    """The flavours a CPU with these LLVM features runs, widest first (AVX512-VNNI CPUs run all three)."""
    features = set(features)
    found = ["avx512vnni"] if {"avx512vnni", "avx512bw"} <= features else []
    found += ["avxvnni"] if found or "avxvnni" in features else []
    return found + (["llvm"] if "avx2" in features else [])


def padded_columns(n: int, lanes: int, panel: int = 1) -> int:
    """N rounded up to whole panels of `panel` column tiles of `lanes` columns."""
    return -(-n // (lanes * panel)) * lanes * panel


def pack_weight(q: np.ndarray, lanes: int, bits: int = 4, panel: int = 1) -> np.ndarray:
    """[K, N] codes in [0, 15] → uint8 [Np/(lanes·panel), K/8, panel, lanes, 4], two codes a byte; 8-bit codes in
    [0, 255] → uint8 [Np/(lanes·panel), K/4, panel, lanes, 4], one a byte (Np = `padded_columns`, zero-padded
    columns). A panel's `panel` column tiles sit side by side at every k step, so a task that reads a whole panel
    (a decode tile of `panel` column blocks) streams one contiguous range of memory."""
    k, n = q.shape
    step = STEPS.get(bits)
    if step is None:
        raise ValueError(f"weight codes have 4 or 8 bits, not {bits}")
    if k % step:
        raise ValueError(f"K = {k} must be a multiple of {step} to pack {bits}-bit weights")
    if q.size and (q.min() < 0 or q.max() > 2**bits - 1):
        raise ValueError(f"{bits}-bit weight codes must lie in [0, {2**bits - 1}]")
    np_ = padded_columns(n, lanes, panel)
    padded = np.zeros((k, np_), np.uint8)
    padded[:, :n] = q
    panels = np_ // (lanes * panel)
    if bits == 8:
        return np.ascontiguousarray(padded.reshape(k // 4, 4, panels, panel, lanes).transpose(2, 0, 3, 4, 1))
    halves = padded.reshape(k // STEP, 2, 4, panels, panel, lanes)  # k = 8·k8 + 4·half + t
    packed = halves[:, 0] | (halves[:, 1] << 4)  # [K/8, 4, panels, panel, lanes]
    return np.ascontiguousarray(packed.transpose(2, 0, 3, 4, 1))


def pack_group_params(
    q: np.ndarray, zero: np.ndarray, scale: np.ndarray, lanes: int, group: int, bits: int = 4, panel: int = 1
):
    """(scale float32, zero int32, W_g int32), each [G, `padded_columns`] (padding: scale 0, zero 0)."""
    check_codes(q, zero, group, bits)
    np_ = padded_columns(q.shape[1], lanes, panel)

    def pad(x, dtype):
        out = np.zeros((x.shape[0], np_), dtype)
        out[:, : x.shape[1]] = x
        return out

    return pad(scale, np.float32), pad(zero, np.int32), pad(weight_group_sums(q, zero, group), np.int32)


def pick_col_blocks(columns: int, lanes: int, wanted: int) -> int:
    """The largest column-block count ≤ `wanted` that divides the padded column tiles."""
    tiles = -(-columns // lanes)
    return max(c for c in range(1, wanted + 1) if tiles % c == 0)


def int4_matmul_func(
    m: int,
    k: int,
    n: int,
    group: int,
    flavour: str,
    rows: int | None = None,
    col_blocks: int | None = None,
    act_zero: bool = False,
    bits: int = 4,
    panel: int = 1,
):
    """PrimFunc main(a int8 [m, k], wp uint8 packed, scale f32 [G, Np], zero i32 [G, Np], [W_g i32 [G, Np],]
    act_scale f32 [m], [act_zero i32 [m],] out f32 [m, Np]) — bracketed parameters only with `act_zero`; `wp` holds
    `bits`-bit codes (4 or 8) as `pack_weight` packs them in panels of `panel` column tiles; Np = `padded_columns`."""
    from tvm.script import tirx as T

    if flavour not in FLAVOURS:
        raise ValueError(f"unknown 4-bit matmul flavour {flavour!r}; expected one of {sorted(FLAVOURS)}")
    if bits not in STEPS:
        raise ValueError(f"weight codes have 4 or 8 bits, not {bits}")
    lanes, step = FLAVOURS[flavour], STEPS[bits]
    if k % step or group % step or k % group:
        raise ValueError(f"K = {k} and the group {group} must be multiples of {step}, and the group must divide K")
    kind = "decode" if m == 1 else "prefill"
    rows = rows or min(TILES[flavour][kind][0], m)
    np_ = padded_columns(n, lanes, panel)
    col_blocks = pick_col_blocks(np_, lanes, col_blocks or TILES[flavour][kind][1])
    if rows * col_blocks * lanes * 4 >= STACK_BYTES:
        raise ValueError(
            f"a {rows} x {col_blocks} tile of {lanes} lanes needs {STACK_BYTES} bytes or more of accumulators"
        )
    groups, steps, width = k // group, group // step, lanes * 4
    col_tiles = np_ // lanes // col_blocks
    row_tiles = -(-m // rows)
    i32v, f32v, u8v, i8v = f"int32x{lanes}", f"float32x{lanes}", f"uint8x{width}", f"int8x{width}"

    def broadcast4(a, i, kk):
        """a[i, kk : kk + 4] as one int32, broadcast over the lanes and seen as bytes (vpdpbusd's signed side)."""
        return T.reinterpret(T.broadcast(T.reinterpret(a.vload([i, kk], "int8x4"), dtype="int32"), lanes), dtype=i8v)

    def row(it, r):
        """Row r of row tile it; rows past M read the last row (their results are not written)."""
        return T.min(it * rows + r, m - 1)

    def packed_vector(wp, jt, c, kk):
        """The packed vector of column block c of column tile jt at k step kk (its tile's place in its panel)."""
        return wp.vload([(jt * col_blocks + c) // panel, kk, (jt * col_blocks + c) % panel, 0, 0], u8v)

    def nibbles(wp, jt, c, k8, high):
        """The 4-bit codes of one packed vector as bytes: the low nibbles, or the high ones."""
        packed = packed_vector(wp, jt, c, k8)
        return T.reinterpret(
            packed >> T.broadcast(T.uint8(4), width) if high else packed & T.broadcast(T.uint8(15), width), dtype=i8v
        )

    def bytes_at(wp, jt, c, k4):
        """The 8-bit codes of one packed vector, as bytes."""
        return T.reinterpret(packed_vector(wp, jt, c, k4), dtype=i8v)

    def pairs(codes, a, i, kk):
        """The int16 pair sums of products of `codes` (u8) and a[i, kk : kk + 4] (s8): vpmaddubsw."""
        return T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"), codes, broadcast4(a, i, kk), dtype="int16x16"
        )

    def widen(sums, weight):
        """`weight` · adjacent int16 sums added into int32 lanes: vpmaddwd."""
        return T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), sums, T.broadcast(T.int16(weight), 16), dtype=i32v
        )

    def pair_sums(codes, a, i, kk, weight):
        """`weight` · the 4-product sums of 4-bit `codes` against a[i, kk : kk + 4] (AVX2: vpmaddubsw, vpmaddwd)."""
        return widen(pairs(codes, a, i, kk), weight)

    def dot8(iacc, r, c, wp, jt, k4, a, i):
        """iacc[r, c] + the 4-product sums of the 8-bit codes of vector k4 against a[i, 4·k4 : 4·k4 + 4]."""
        if flavour != "llvm":
            return dot(iacc, r, c, bytes_at(wp, jt, c, k4), a, i, k4 * 4)
        packed = packed_vector(wp, jt, c, k4)
        low = T.reinterpret(packed & T.broadcast(T.uint8(15), width), dtype=i8v)
        high = T.reinterpret(packed >> T.broadcast(T.uint8(4), width), dtype=i8v)
        return iacc.vload([r, c, 0], i32v) + pair_sums(low, a, i, k4 * 4, 1) + pair_sums(high, a, i, k4 * 4, 16)

    def dot(iacc, r, c, codes, a, i, kk):
        """iacc[r, c] + the 4-product sums of `codes` against a[i, kk : kk + 4] (vpdpbusd, or its AVX2 pair)."""
        if flavour != "llvm":
            return T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(_VPDPBUSD[lanes]),
                iacc.vload([r, c, 0], i32v),
                codes,
                broadcast4(a, i, kk),
                dtype=i32v,
            )
        return iacc.vload([r, c, 0], i32v) + pair_sums(codes, a, i, kk, 1)

    def exact(iacc, zero, wsum, asum, act_zero, r, c, g, i, n0):
        """Σ_{k∈g} (q − z)·(a − z_a) of the accumulators iacc[r, c] (row i, columns n0 …)."""
        value = iacc.vload([r, c, 0], i32v) - zero.vload([g, n0], i32v) * T.broadcast(asum[i, g], lanes)
        if act_zero is not None:
            value = value - wsum.vload([g, n0], i32v) * T.broadcast(act_zero[i], lanes)
        return value

    @T.macro
    def step4(iacc, wp, a, g, s, task):
        """One packed vector of 4-bit codes into every accumulator: the low nibbles, then the high ones."""
        for c in T.unroll(col_blocks):
            for r in T.unroll(rows):
                iacc[r, c, T.ramp(0, 1, lanes)] = dot(
                    iacc,
                    r,
                    c,
                    nibbles(wp, task // row_tiles, c, g * steps + s, False),
                    a,
                    row(task % row_tiles, r),
                    (g * steps + s) * STEP,
                )
                iacc[r, c, T.ramp(0, 1, lanes)] = dot(
                    iacc,
                    r,
                    c,
                    nibbles(wp, task // row_tiles, c, g * steps + s, True),
                    a,
                    row(task % row_tiles, r),
                    (g * steps + s) * STEP + 4,
                )

    @T.macro
    def step8(iacc, wp, a, g, s, task):
        """One packed vector of 8-bit codes into every accumulator."""
        for c in T.unroll(col_blocks):
            for r in T.unroll(rows):
                iacc[r, c, T.ramp(0, 1, lanes)] = dot8(
                    iacc, r, c, wp, task // row_tiles, g * steps + s, a, row(task % row_tiles, r)
                )

    # AVX2 with 4-bit codes: int16 sums of `fold` packed vectors (a divisor of the group's steps) before widening
    fold = max(f for f in range(1, SHORT_STEPS + 1) if steps % f == 0) if flavour == "llvm" and bits == 4 else 1

    @T.macro
    def short_steps(iacc, sacc, wp, a, g, s0, task):
        """`fold` packed vectors of 4-bit codes summed in the int16 accumulators `sacc`, then widened into iacc."""
        for r in T.unroll(rows):
            for c in T.unroll(col_blocks):
                sacc[r, c, T.ramp(0, 1, 16)] = T.broadcast(T.int16(0), 16)
        for s1 in T.unroll(fold):
            for c in T.unroll(col_blocks):
                for r in T.unroll(rows):
                    sacc[r, c, T.ramp(0, 1, 16)] = (
                        sacc.vload([r, c, 0], "int16x16")
                        + pairs(
                            nibbles(wp, task // row_tiles, c, g * steps + s0 * fold + s1, False),
                            a,
                            row(task % row_tiles, r),
                            (g * steps + s0 * fold + s1) * STEP,
                        )
                        + pairs(
                            nibbles(wp, task // row_tiles, c, g * steps + s0 * fold + s1, True),
                            a,
                            row(task % row_tiles, r),
                            (g * steps + s0 * fold + s1) * STEP + 4,
                        )
                    )
        for r in T.unroll(rows):
            for c in T.unroll(col_blocks):
                iacc[r, c, T.ramp(0, 1, lanes)] = iacc.vload([r, c, 0], i32v) + widen(
                    sacc.vload([r, c, 0], "int16x16"), 1
                )

    accumulate = step4 if bits == 4 else step8

    @T.macro
    def body(a, wp, scale, zero, wsum, act_scale, act_zero, out, asum, task):
        facc = T.alloc_buffer((rows, col_blocks, lanes), "float32", scope="global")
        iacc = T.alloc_buffer((rows, col_blocks, lanes), "int32", scope="global")
        for r in T.unroll(rows):
            for c in T.unroll(col_blocks):
                facc[r, c, T.ramp(0, 1, lanes)] = T.broadcast(T.float32(0), lanes)
        for g in range(groups):
            for r in T.unroll(rows):
                for c in T.unroll(col_blocks):
                    iacc[r, c, T.ramp(0, 1, lanes)] = T.broadcast(0, lanes)
            if fold > 1:
                sacc = T.alloc_buffer((rows, col_blocks, 16), "int16", scope="global")
                for s0 in range(steps // fold):
                    short_steps(iacc, sacc, wp, a, g, s0, task)
            else:
                for s in range(steps):
                    accumulate(iacc, wp, a, g, s, task)
            for r in T.unroll(rows):
                for c in T.unroll(col_blocks):
                    facc[r, c, T.ramp(0, 1, lanes)] = facc.vload([r, c, 0], f32v) + scale.vload(
                        [g, (task // row_tiles * col_blocks + c) * lanes], f32v
                    ) * T.cast(
                        exact(
                            iacc,
                            zero,
                            wsum,
                            asum,
                            act_zero,
                            r,
                            c,
                            g,
                            row(task % row_tiles, r),
                            (task // row_tiles * col_blocks + c) * lanes,
                        ),
                        f32v,
                    )
        for r in T.unroll(rows):
            for c in T.unroll(col_blocks):
                if task % row_tiles * rows + r < m:
                    out[task % row_tiles * rows + r, T.ramp((task // row_tiles * col_blocks + c) * lanes, 1, lanes)] = (
                        facc.vload([r, c, 0], f32v) * T.broadcast(act_scale[task % row_tiles * rows + r], lanes)
                    )

    @T.macro
    def sums(a, asum):
        for i in T.parallel(m):
            for g in range(groups):
                asum[i, g] = 0
                for kk in range(group):
                    asum[i, g] = asum[i, g] + T.cast(a[i, g * group + kk], "int32")

    wp_shape = (np_ // lanes // panel, k // step, panel, lanes, 4)
    if act_zero:

        @T.prim_func(s_tir=True)
        def func(
            a: T.Buffer((m, k), "int8"),
            wp: T.Buffer(wp_shape, "uint8"),
            scale: T.Buffer((groups, np_), "float32"),
            zero: T.Buffer((groups, np_), "int32"),
            wsum: T.Buffer((groups, np_), "int32"),
            act_scale: T.Buffer((m,), "float32"),
            act_zero: T.Buffer((m,), "int32"),
            out: T.Buffer((m, np_), "float32"),
        ):
            T.func_attr({"global_symbol": "main", "tir.noalias": True})
            asum = T.alloc_buffer((m, groups), "int32")
            sums(a, asum)
            for task in T.parallel(col_tiles * row_tiles):
                body(a, wp, scale, zero, wsum, act_scale, act_zero, out, asum, task)

    else:

        @T.prim_func(s_tir=True)
        def func(
            a: T.Buffer((m, k), "int8"),
            wp: T.Buffer(wp_shape, "uint8"),
            scale: T.Buffer((groups, np_), "float32"),
            zero: T.Buffer((groups, np_), "int32"),
            act_scale: T.Buffer((m,), "float32"),
            out: T.Buffer((m, np_), "float32"),
        ):
            T.func_attr({"global_symbol": "main", "tir.noalias": True})
            asum = T.alloc_buffer((m, groups), "int32")
            sums(a, asum)
            for task in T.parallel(col_tiles * row_tiles):
                body(a, wp, scale, zero, None, act_scale, None, out, asum, task)

    return func
