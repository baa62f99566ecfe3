"""4-bit packed weights × float activations (`w4a16`) on x86: one kernel for decode (M = 1) and prefill tiles.

    y[i, n] = Σ_g s[g, n] · ( Σ_{k∈g} q[k, n]·x[i, k] − z[g, n]·Σ_{k∈g} x[i, k] )

= x · W with W[k, n] = (q[k, n] − z[g, n])·s[g, n], the artifact's dequantized weight, summed in another float order
(a float kernel: equal to the float64 product within float32 rounding, not bit for bit). The weights are packed as
for the integer matmul (`int4_matmul.pack_weight`, same constants): one vector load of `lanes` × 4 bytes holds, per
column lane, one int32 whose byte t carries q[8·k8 + t] in its low nibble and q[8·k8 + 4 + t] in its high one. The
nibble of k-value j is (v >> (8·(j mod 4) + 4·(j div 4))) & 15 in every lane at once, converted to float32 in
registers and multiplied by the broadcast x[i, 8·k8 + j]: four vector operations per `lanes` products, the codes
never unpacked in memory. The product and its sum are one fused multiply-add (`llvm.fma`, which the pipeline's
`fence` leaves alone: this float kernel has no ONNX Runtime rounding to match). Zero points leave the inner loop
(−z·Σx per group, Σx per row and group computed first); the group's sum enters the float accumulator scaled once per
group, in group order.
"""

from __future__ import annotations

import numpy as np

from qcompile.backends.tvm.kernels.int4_matmul import FLAVOURS, STACK_BYTES, STEP, padded_columns, pick_col_blocks

__all__ = ["int4_float_matmul_func", "pack_float_group_params", "TILES"]

TILES = {16: {"decode": (1, 4), "prefill": (4, 2)}, 8: {"decode": (1, 4), "prefill": (4, 2)}}  # (rows, col_blocks)


def pack_float_group_params(zero: np.ndarray, scale: np.ndarray, lanes: int, panel: int = 1):
    """(scale float32, zero float32), each [G, `padded_columns`] (padding 0)."""
    np_ = padded_columns(zero.shape[1], lanes, panel)
    out = np.zeros((2, zero.shape[0], np_), np.float32)
    out[0, :, : zero.shape[1]], out[1, :, : zero.shape[1]] = scale, zero
    return out[0], out[1]


def int4_float_matmul_func(
    m: int,
    k: int,
    n: int,
    group: int,
    flavour: str,
    rows: int | None = None,
    col_blocks: int | None = None,
    panel: int = 1,
):
    """PrimFunc main(x f32 [m, k], wp uint8 packed (panels of `panel` column tiles), scale f32 [G, Np], zero f32
    [G, Np], out f32 [m, Np]), Np = `padded_columns`."""
    from tvm.script import tirx as T

    if flavour not in FLAVOURS:
        raise ValueError(f"unknown 4-bit matmul flavour {flavour!r}; expected one of {sorted(FLAVOURS)}")
    if k % STEP or group % STEP or k % group:
        raise ValueError(f"K = {k} and the group {group} must be multiples of {STEP}, and the group must divide K")
    lanes = FLAVOURS[flavour]
    kind = "decode" if m == 1 else "prefill"
    rows = rows or min(TILES[lanes][kind][0], m)
    np_ = padded_columns(n, lanes, panel)
    col_blocks = pick_col_blocks(np_, lanes, col_blocks or TILES[lanes][kind][1])
    if rows * col_blocks * lanes * 4 >= STACK_BYTES:
        raise ValueError(f"a {rows} x {col_blocks} tile of {lanes} lanes needs {STACK_BYTES} bytes or more")
    groups, steps = k // group, group // STEP
    col_tiles, row_tiles = np_ // lanes // col_blocks, -(-m // rows)
    i32v, f32v, u8v = f"int32x{lanes}", f"float32x{lanes}", f"uint8x{lanes * 4}"

    def row(it, r):
        return T.min(it * rows + r, m - 1)

    def code(wp, jt, c, k8, j):
        """The 4-bit codes of k-value 8·k8 + j of `lanes` columns, as float32."""
        tile = jt * col_blocks + c
        packed = T.reinterpret(wp.vload([tile // panel, k8, tile % panel, 0, 0], u8v), dtype=i32v)
        shift = T.broadcast(8 * (j % 4) + 4 * (j // 4), lanes)
        return T.Cast(f32v, (packed >> shift) & T.broadcast(15, lanes))

    @T.prim_func(s_tir=True)
    def func(
        x: T.Buffer((m, k), "float32"),
        wp: T.Buffer((np_ // lanes // panel, k // STEP, panel, lanes, 4), "uint8"),
        scale: T.Buffer((groups, np_), "float32"),
        zero: T.Buffer((groups, np_), "float32"),
        out: T.Buffer((m, np_), "float32"),
    ):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        xsum = T.alloc_buffer((m, groups), "float32")
        for i in T.parallel(m):
            for g in range(groups):
                xsum[i, g] = T.float32(0)
                for kk in range(group):
                    xsum[i, g] = xsum[i, g] + x[i, g * group + kk]
        for task in T.parallel(col_tiles * row_tiles):
            facc = T.alloc_buffer((rows, col_blocks, lanes), "float32", scope="global")
            qacc = T.alloc_buffer((rows, col_blocks, lanes), "float32", scope="global")
            for r in T.unroll(rows):
                for c in T.unroll(col_blocks):
                    facc[r, c, T.ramp(0, 1, lanes)] = T.broadcast(T.float32(0), lanes)
            for g in range(groups):
                for r in T.unroll(rows):
                    for c in T.unroll(col_blocks):
                        qacc[r, c, T.ramp(0, 1, lanes)] = T.broadcast(T.float32(0), lanes)
                for s in range(steps):
                    for j in T.unroll(STEP):
                        for c in T.unroll(col_blocks):
                            for r in T.unroll(rows):
                                qacc[r, c, T.ramp(0, 1, lanes)] = T.call_llvm_pure_intrin(
                                    T.llvm_lookup_intrinsic_id("llvm.fma"),
                                    code(wp, task // row_tiles, c, g * steps + s, j),
                                    T.broadcast(x[row(task % row_tiles, r), (g * steps + s) * STEP + j], lanes),
                                    qacc.vload([r, c, 0], f32v),
                                    dtype=f32v,
                                )
                for r in T.unroll(rows):
                    for c in T.unroll(col_blocks):
                        facc[r, c, T.ramp(0, 1, lanes)] = facc.vload([r, c, 0], f32v) + scale.vload(
                            [g, (task // row_tiles * col_blocks + c) * lanes], f32v
                        ) * (
                            qacc.vload([r, c, 0], f32v)
                            - zero.vload([g, (task // row_tiles * col_blocks + c) * lanes], f32v)
                            * T.broadcast(xsum[row(task % row_tiles, r), g], lanes)
                        )
            for r in T.unroll(rows):
                for c in T.unroll(col_blocks):
                    if task % row_tiles * rows + r < m:
                        out[
                            task % row_tiles * rows + r, T.ramp((task // row_tiles * col_blocks + c) * lanes, 1, lanes)
                        ] = facc.vload([r, c, 0], f32v)

    return func
