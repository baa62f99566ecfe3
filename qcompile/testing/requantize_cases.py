"""Per-channel requantize cases for GEMM kernel tests: seeded parameters in the ranges the integer
lowering produces for int32 accumulators (multipliers in [2^30, 2^31), shifts in [20, 30), offsets in
±2^25), and the TE epilogue that applies them to a GEMM's accumulator."""

from __future__ import annotations

import numpy as np

__all__ = ["per_channel_requantize", "requantize_epilogue"]


def per_channel_requantize(n: int, seed: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(m, e, b) int64 [n]."""
    rng = np.random.default_rng(seed)
    mult = rng.integers(2**30, 2**31, n).astype(np.int64)
    shift = rng.integers(20, 30, n).astype(np.int64)
    offset = rng.integers(-(2**25), 2**25, n).astype(np.int64)
    return mult, shift, offset


def requantize_epilogue(n: int, lo: int, hi: int, out_dtype: str):
    """(TE placeholders m, e, b [n], f(acc, index)) for `int_gemm_func`'s / `vnni_gemm_func`'s `epilogue`."""
    from tvm import te

    from qcompile.backends.tvm.kernels.requantize import requantize_expr

    params = [te.placeholder((n,), "int64", name=name) for name in ("m", "e", "b")]
    return params, lambda acc, index: requantize_expr(acc, index, *params, lo, hi, out_dtype)
