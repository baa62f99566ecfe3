"""Low-bit floating-point formats (LLM-FP4, Liu et al. 2023; OCP FP8/MX) as grids, and rounding onto them.

A format with E exponent bits and M mantissa bits is used here, as in LLM-FP4, in **unit scale**: its grid is

    subnormals  k · 2^(1−M)                      k = 0 … 2^M − 1          (|y| < 2)
    binade p    (2^M + m) · 2^(p−M)              m = 0 … 2^M − 1,  p = 1 … P    ([2^p, 2^(p+1)))

and the sign, so every code but the top binade's reserved ones is finite. P = 2^E − 1 for the all-finite
formats (LLM-FP4's E2M1, E3M0, E1M2; OCP's FP4 E2M1 is this grid over 2); IEEE-style E5M2 reserves the top
exponent (P = 2^E − 2) and E4M3FN only its all-ones code (the top binade stops one step early: 448·2^7). A
value x with scale s (LLM-FP4's real-valued exponent bias b is s = 2^(−b)) is quantized as x̂ = s · round(x / s)
where round(y), with a = min(|y|, max) (saturating, as ONNX's float8 QuantizeLinear does):

    p = max(floor(log2 a), 1)     step = 2^(p − M)     round(y) = sign(y) · rint(a / step) · step

with rint half to even; at a binade's top the even neighbour is the next power of two, so this is IEEE
round-to-nearest-even on the code's mantissa. `fp_round` computes it in float32 op for op as the ONNX
function `qcompile.FpRound*` does (floor(log2 a) as 1 + Σ_k [a ≥ 2^k], exact); `enumerate_grid` decodes every
bit pattern independently, for tests.

ONNX's own types of the same grids: `onnx_scale` = 2^bias converts a unit-scale s into the scale of
QuantizeLinear/DequantizeLinear to FLOAT8E4M3FN (bias 7), FLOAT8E5M2 (bias 15), FLOAT4E2M1 (bias 1).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["FpFormat", "FORMATS", "FORMATS_BY_BITS", "fp_format", "fp_round", "enumerate_grid"]


@dataclasses.dataclass(frozen=True)
class FpFormat:
    name: str
    exponent_bits: int
    mantissa_bits: int
    top_binade: int  # P: the largest p
    top_mantissa: int  # the largest m in binade P (2^M − 1, or one less for E4M3FN)
    onnx_bias: int | None = None  # the exponent bias of ONNX's type of this grid, if ONNX has one
    onnx_type: str | None = None  # onnx.TensorProto name; None: no type (a qcompile function rounds)

    @property
    def bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def max_value(self) -> float:
        """The largest magnitude in unit scale."""
        m = self.mantissa_bits
        return float((2**m + self.top_mantissa) * 2.0 ** (self.top_binade - m))

    @property
    def onnx_scale(self) -> float:
        """The factor from a unit-scale s to ONNX's QuantizeLinear scale: 2^bias (its grid is ours / 2^bias)."""
        if self.onnx_bias is None:
            raise ValueError(f"{self.name} has no ONNX type")
        return float(2.0**self.onnx_bias)


def _all_finite(name: str, e: int, m: int, **onnx) -> FpFormat:
    return FpFormat(name, e, m, 2**e - 1, 2**m - 1, **onnx)


FORMATS = {
    f.name: f
    for f in (
        _all_finite("e2m1", 2, 1, onnx_bias=1, onnx_type="FLOAT4E2M1"),
        _all_finite("e3m0", 3, 0),
        _all_finite("e1m2", 1, 2),
        FpFormat("e4m3", 4, 3, 15, 6, onnx_bias=7, onnx_type="FLOAT8E4M3FN"),  # S.1111.111 is NaN
        FpFormat("e5m2", 5, 2, 30, 3, onnx_bias=15, onnx_type="FLOAT8E5M2"),  # exponent 11111: inf, NaN
    )
}
FORMATS_BY_BITS = {4: ("e2m1", "e3m0", "e1m2"), 8: ("e4m3", "e5m2")}


def fp_format(name: str) -> FpFormat:
    if name not in FORMATS:
        raise ValueError(f"unknown floating-point format {name!r}; known: {', '.join(FORMATS)}")
    return FORMATS[name]


def fp_round(y: np.ndarray, fmt: FpFormat) -> np.ndarray:
    """round(y) onto `fmt`'s unit-scale grid, float32, op for op the ONNX function (module docstring)."""
    y = np.asarray(y, dtype=np.float32)
    a = np.minimum(np.abs(y), np.float32(fmt.max_value))
    p = np.ones_like(a)
    for k in range(2, fmt.top_binade + 1):
        p = p + (a >= np.float32(2.0**k)).astype(np.float32)
    step = np.power(np.float32(2.0), p - np.float32(fmt.mantissa_bits))
    return (np.sign(y) * (np.rint(a / step) * step)).astype(np.float32)


def enumerate_grid(fmt: FpFormat) -> np.ndarray:
    """Every non-negative finite value of `fmt` in unit scale, decoded from its bit patterns (sorted), for tests:
    exponent field 0 is subnormal (m · 2^(1−M)), field e ≥ 1 is (2^M + m) · 2^(e−M)."""
    m_bits, values = fmt.mantissa_bits, []
    for e in range(2**fmt.exponent_bits):
        for m in range(2**m_bits):
            if e > fmt.top_binade or (e == fmt.top_binade and m > fmt.top_mantissa):
                continue  # reserved codes (inf, NaN)
            values.append(m * 2.0 ** (1 - m_bits) if e == 0 else (2**m_bits + m) * 2.0 ** (e - m_bits))
    return np.array(sorted(values))
