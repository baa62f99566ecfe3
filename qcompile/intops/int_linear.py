"""`qcompile.IntLinear` and `qcompile.IntAdd`: the integer linear layer and the requantizing residual add.

IntLinear (x int8/uint8 codes [..., K], w int8 codes [K, N], bias int32 [N]):

    acc = Cast(x, int32) · Cast(w, int32) + bias            (int32 MatMul, exact)

The real value is acc·S_x·S_w[n]; an activation zero point z_x is folded into the bias by the lowering,
bias' = round(b/(S_x·S_w)) − z_x·Σ_k w[k, n], so no per-element subtraction is needed. |acc| ≤
K·255·127 + |bias| stays far below 2^31 for K ≤ 16384.

Why not MatMulInteger: ONNX Runtime's u8×s8 kernel on AVX2 CPUs without VNNI multiplies with
vpmaddubsw, which adds pairs of u8·s8 products in saturating int16; with full-range operands
(255·127·2 = 64770 > 32767) the int32 result is wrong (issue 4 measured errors up to 26,277; x = 255
against w = 127 over K = 256 gives 2,097,088 instead of 4,145,280 on the AVX2 development CPU). The int32
MatMul form has no such path in any backend, and TVM's importer turns MatMulInteger into an int32 × int32
matmul anyway; the TVM backend recognizes Cast(int8)→MatMul and picks its own exact int8 kernel.

IntAdd (a, b int32 at scales S_a, S_b; output scale S_out; (m_a, e_a), (m_b, e_b) the dyadic multipliers
of S_a/S_out and S_b/S_out):

    out = clamp(R(a; m_a, e_a) + R(b; m_b, e_b), lo, hi)    (R = `Requantize` without its clamp)

as I-ViT's residual requant-add: each branch rounded on its own, then summed and clamped (METHODS.md §0).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnxscript import INT8, INT32, INT64, script
from onnxscript import opset18 as op

from qcompile.intops.domain import QCOMPILE_OPSET
from qcompile.intops.requantize import Requantize, requantize

__all__ = ["int_linear", "IntLinear", "int_add", "IntAdd"]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def int_linear(x: np.ndarray, w: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """NumPy reference (int64 result; exact, no overflow possible in int64)."""
    return np.asarray(x).astype(np.int64) @ np.asarray(w).astype(np.int64) + np.asarray(bias).astype(np.int64)


@script(QCOMPILE_OPSET, default_opset=op)
def IntLinear(x: INT8, w: INT8, bias: INT32) -> INT32:
    return op.Add(op.MatMul(op.Cast(x, to=onnx.TensorProto.INT32), op.Cast(w, to=onnx.TensorProto.INT32)), bias)


def int_add(a: np.ndarray, b: np.ndarray, m_a, e_a, m_b, e_b, lo: int, hi: int) -> np.ndarray:
    """NumPy reference (int64 result)."""
    total = requantize(a, m_a, e_a, 0, INT64_MIN, INT64_MAX) + requantize(b, m_b, e_b, 0, INT64_MIN, INT64_MAX)
    return np.clip(total, lo, hi)


@script(QCOMPILE_OPSET, default_opset=op)
def IntAdd(a: INT32, b: INT32, m_a: INT64, e_a: INT64, m_b: INT64, e_b: INT64, lo: INT64, hi: INT64) -> INT64:
    low = op.Constant(value_int=-9223372036854775808)
    high = op.Constant(value_int=9223372036854775807)
    zero = op.Constant(value_int=0)
    return op.Clip(op.Add(Requantize(a, m_a, e_a, zero, low, high), Requantize(b, m_b, e_b, zero, low, high)), lo, hi)
