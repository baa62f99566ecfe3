"""Dynamic per-token activation quantization (`QuantSpec.per_token`) as one TVM kernel, op for op the float32
algebra of `qcompile.runtime.qdq`'s per-token quantizer (and `QuantSpec._token_quantize`), so the codes are
bit for bit those of the ONNX artifact:

    symmetric:  s = max((max_k |x| · r) / qmax, tiny),  q = clip(rint(x / s), −qmax, qmax)
                → codes q (int8), zero point 0
    asymmetric: lo = min(min_k x, 0)·r,  hi = max(max_k x, 0)·r,  s = max((hi − lo) / L, tiny),
                z = clip(rint(−lo / s), 0, L),  q = clip(rint(x / s) + z, 0, L)
                → codes q − 128 (int8), zero point z − 128 (int32)

rint rounds half to even (ONNX's Round; LLVM's nearbyint), every product and quotient is rounded on its own
(the float products are fenced against FMA contraction like every CPU kernel, `fence.py`). The asymmetric
codes are shifted into int8 so that the 4-bit matmul (`int4_matmul_vnni`) takes both kinds as its signed
operand: (q − 128) − (z − 128) = q − z.

Written out in TIR: rows in parallel, each row's reduction (serial: a float max/min reduction is not
reassociated by LLVM without fast-math flags) and then its codes in one vectorized loop. Outputs: codes int8
[M, K], scale float32 [M], and for the asymmetric kind the zero point int32 [M].
"""

from __future__ import annotations

import numpy as np

from qcompile.ir.quant_meta import TOKEN_MIN_SCALE

__all__ = ["token_quantize_func", "quantize_row_macro", "SHIFT"]

SHIFT = 128  # asymmetric uint8 codes and zero points are passed as int8 / int32 minus this


def quantize_row_macro(k: int, bits: int, symmetric: bool, clip_ratio: float = 1.0, vector: int = 16):
    """A TVMScript macro `quantize_row(x, i, codes, scale, zero)`: row i of x [·, k] (any float32 buffer) → its codes
    (int8), scale and, when asymmetric, zero point (int32; for a symmetric quantizer `zero` is written 0 when it
    is a buffer, or skipped when it is None); the reduction serial, the codes in `vector`-wide loops (a serial tail
    when k is not a multiple). Kernels that make the row first (a norm, a transform) end with it."""
    from tvm.script import tirx as T

    if not 2 <= bits <= 8:
        raise ValueError(f"per-token codes need 2 to 8 bits, got {bits}")
    ratio, tiny = T.float32(float(np.float32(clip_ratio))), T.float32(float(TOKEN_MIN_SCALE))
    top = T.float32(float(2 ** (bits - 1) - 1 if symmetric else 2**bits - 1))
    body, tail = k // vector * vector, k % vector

    def clipped(value, lo, hi):
        return T.max(T.min(value, hi), lo)

    def code(x, i, j, scale, zero):
        """The int8 code of x[i, j] (j a scalar index or a ramp) given the row's scale and float zero point."""
        if symmetric:
            return T.Cast("int8", clipped(T.nearbyint(x[i, j] / scale), -top, top))
        return T.Cast("int8", T.Cast("int32", clipped(T.nearbyint(x[i, j] / scale) + zero, T.float32(0), top)) - SHIFT)

    @T.macro
    def row_codes(x, codes, i, scale, zero):
        for jo in range(body // vector):
            for ji in T.vectorized(vector):
                codes[i, jo * vector + ji] = code(x, i, jo * vector + ji, scale, zero)
        for j in range(tail):
            codes[i, body + j] = code(x, i, body + j, scale, zero)

    if symmetric:

        @T.macro
        def quantize_row(x, i, codes, scale, zero):
            absmax = T.alloc_buffer((1,), "float32", scope="global")
            absmax[0] = T.float32(0)
            for j in range(k):
                absmax[0] = T.max(absmax[0], T.abs(x[i, j]))
            scale[i] = T.max((absmax[0] * ratio) / top, tiny)
            if zero is not None:
                zero[i] = 0
            row_codes(x, codes, i, scale[i], T.float32(0))

        return quantize_row

    @T.macro
    def quantize_row(x, i, codes, scale, zero):
        bounds = T.alloc_buffer((3,), "float32", scope="global")  # lo, hi, zero point
        bounds[0] = T.float32(0)
        bounds[1] = T.float32(0)
        for j in range(k):
            bounds[0] = T.min(bounds[0], x[i, j])
            bounds[1] = T.max(bounds[1], x[i, j])
        scale[i] = T.max((bounds[1] * ratio - bounds[0] * ratio) / top, tiny)
        bounds[2] = clipped(T.nearbyint(-(bounds[0] * ratio) / scale[i]), T.float32(0), top)
        zero[i] = T.Cast("int32", bounds[2]) - SHIFT
        row_codes(x, codes, i, scale[i], bounds[2])

    return quantize_row


def token_quantize_func(m: int, k: int, bits: int, symmetric: bool, clip_ratio: float = 1.0, vector: int = 16):
    """PrimFunc main(x float32 [m, k], codes int8 [m, k], scale float32 [m][, zero int32 [m]]): rows in
    parallel (one row: on the calling thread), each `quantize_row_macro`."""
    from tvm.script import tirx as T

    quantize_row = quantize_row_macro(k, bits, symmetric, clip_ratio, vector)
    rows = T.parallel if m > 1 else T.serial

    if symmetric:

        @T.prim_func(s_tir=True)
        def func(x: T.Buffer((m, k), "float32"), codes: T.Buffer((m, k), "int8"), scale: T.Buffer((m,), "float32")):
            T.func_attr({"global_symbol": "main", "tir.noalias": True})
            for i in rows(m):
                quantize_row(x, i, codes, scale, None)

        return func

    @T.prim_func(s_tir=True)
    def func(
        x: T.Buffer((m, k), "float32"),
        codes: T.Buffer((m, k), "int8"),
        scale: T.Buffer((m,), "float32"),
        zero: T.Buffer((m,), "int32"),
    ):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        for i in rows(m):
            quantize_row(x, i, codes, scale, zero)

    return func
