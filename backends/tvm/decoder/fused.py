"""The per-token quantizer of a linear layer's input with the float steps in front of it, as one kernel:

    codes, scale, zero = quantize(transform(prologue(x)))        row by row, m rows

    prologue   rms    r = x · 1/√(Σx²/k + ε) (⊙ γ)           x [m, k]   `kernels.rms_row_macro` (the block's norms)
               silu   r = g · 1/(1 + e^(−g)) · u            x [m, 2k]  `kernels.silu_row_macro` (SwiGLU: g, u halves)
               none   r = x
    transform  y = Aᵀ R B per row (one Kronecker step), or none      `kernels.kronecker_macro`
    quantize   `token_quantize.quantize_row_macro`: codes int8, scale, zero point int32 (0 when symmetric)

Each stage is the macro its own kernel runs, so the codes, scales and zero points are bit for bit those of the
separate kernels (rms_norm → kronecker → token_quantize; tests/backends/test_tvm_decoder_fused.py): fusing changes
where the rows live (scratch buffers of this kernel, not tensors of the step), not a value. One kernel call instead
of two or three, and no step tensor for r or y; a one-row call keeps its prologue and quantizer on the calling thread
(the transform runs its tasks in parallel when it is large enough, `kernels.PARALLEL_MACS`).

    main(x f32 [m, k or 2k], gamma f32 [k or 1], A f32 [a, a], B f32 [b, b] (a signed Hadamard B: its signs and
         H₈, [b + 64]), codes i8 [m, k], scale f32 [m], zero i32 [m])

gamma, A and B are read only when the prologue has a γ and when there is a transform: the step passes a shared
one-element (or 1 × 1) constant in their place otherwise, so one signature serves every form.
"""

from __future__ import annotations

from qcompile.backends.tvm.decoder.kernels import kronecker_macro, rms_row_macro, silu_row_macro
from qcompile.backends.tvm.kernels.token_quantize import quantize_row_macro

__all__ = ["fused_quantize_func", "PROLOGUES"]

PROLOGUES = ("none", "rms", "silu")


def fused_quantize_func(
    m: int,
    k: int,
    prologue: str,
    kron: tuple[int, int] | None,
    bits: int,
    symmetric: bool,
    clip_ratio: float = 1.0,
    eps: float = 1e-6,
    gamma: bool = False,
    hadamard: bool = False,
):
    """The kernel of the module docstring for m rows of k, `prologue` in PROLOGUES (`eps`, `gamma`: the RMSNorm's),
    `kron` = (a, b) with a·b = k or None; `hadamard`: B is a signed Hadamard matrix, passed as
    `kernels.hadamard_table` [b + 64] (the fast transform of `kernels.kronecker_macro`)."""
    from tvm.script import tirx as T

    if prologue not in PROLOGUES:
        raise ValueError(f"prologue is one of {PROLOGUES}, not {prologue!r}")
    if prologue == "none" and kron is None:
        raise ValueError("nothing to fuse: a quantizer alone is `token_quantize_func`")
    if kron is not None and kron[0] * kron[1] != k:
        raise ValueError(f"a Kronecker step of {kron[0]} x {kron[1]} does not transform rows of {k}")
    a, b = kron or (1, 1)
    width = 2 * k if prologue == "silu" else k
    rows = T.parallel if m > 1 else T.serial
    quantize_row = quantize_row_macro(k, bits, symmetric, clip_ratio)
    rms_row = rms_row_macro(k, eps, gamma)
    silu_row = silu_row_macro(k)
    kronecker = kronecker_macro(m, a, b, hadamard) if kron is not None else None

    @T.macro
    def prologue_row(x, g, r, i):
        if prologue == "rms":
            rms_row(x, g, r, i)
        else:
            silu_row(x, r, i)

    if kron is None:

        @T.macro
        def stages(x, g, fa, fb, codes, scale, zero):
            r = T.alloc_buffer((m, k), "float32")
            for i in rows(m):
                prologue_row(x, g, r, i)
                quantize_row(r, i, codes, scale, zero)

    elif prologue == "none":

        @T.macro
        def stages(x, g, fa, fb, codes, scale, zero):
            y = T.alloc_buffer((m, k), "float32")
            kronecker(x, fa, fb, y)
            for i in rows(m):
                quantize_row(y, i, codes, scale, zero)

    else:

        @T.macro
        def stages(x, g, fa, fb, codes, scale, zero):
            r = T.alloc_buffer((m, k), "float32")
            y = T.alloc_buffer((m, k), "float32")
            for i in rows(m):
                prologue_row(x, g, r, i)
            kronecker(r, fa, fb, y)
            for i in rows(m):
                quantize_row(y, i, codes, scale, zero)

    @T.prim_func(s_tir=True)
    def func(
        x: T.Buffer((m, width), "float32"),
        g: T.Buffer((k if gamma else 1,), "float32"),
        fa: T.Buffer((a, a), "float32"),
        fb: T.Buffer((b + 64,) if hadamard else (b, b), "float32"),
        codes: T.Buffer((m, k), "int8"),
        scale: T.Buffer((m,), "float32"),
        zero: T.Buffer((m,), "int32"),
    ):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        stages(x, g, fa, fb, codes, scale, zero)

    return func
