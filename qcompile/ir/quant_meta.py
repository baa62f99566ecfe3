"""Typed quantization facts attached to IR values.

Two kinds of fact, each a dataclass stored in `Value.meta` under one key and read only through the
accessors below:

* `TensorRange` — what calibration observed for a value: the clipping range [lo, hi] chosen by an
  observer, the raw min/max, and (optionally) the per-channel max|x| along the last axis.
* `QuantSpec` — the quantizer chosen for a value, one of two kinds:

  - ``kind="uniform"`` (the default): ``q = clamp(round(x / scale) + zero_point, qmin, qmax)``,
    ``x̂ = (q - zero_point) * scale``, per tensor (`axis is None`) or per channel along `axis`.
  - ``kind="log_sqrt2"``: RepQ-ViT's log√2 quantizer for post-Softmax activations (values in [0, 1]),
    unsigned, per tensor, ``scale`` = Δ, ``zero_point`` = 0. Codes ``q = clamp(round(−2·log2(x / Δ)), 0,
    2^b − 1)``; the top code 2^b − 1 means exactly 0 (x ≤ 0 maps to it), the others dequantize to
    ``x̂ = Δ · 2^(−q/2)``, computed in the reparameterized form ``Δ · 2^(−ceil(q/2)) · (1 + (√2 − 1)·(q mod 2))``
    (RepQ-ViT §3.3). See `QuantSpec` for the one deviation from RepQ-ViT's reference.

  `bits` may be below the container's width (int8/uint8 hold 2..8-bit codes); `qmin`/`qmax` are the b-bit
  limits, not the container's. Rounding is half to even, as ONNX Round/QuantizeLinear do.

Backends turn uniform `QuantSpec`s into QuantizeLinear/DequantizeLinear nodes and log√2 ones into the
model-local functions of `qcompile.runtime.log_quant`; passes never write QDQ nodes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from onnx_ir import Graph, Value

__all__ = [
    "TensorRange",
    "QuantSpec",
    "get_range",
    "set_range",
    "get_quant",
    "set_quant",
    "clear_quant",
    "quantized_values",
    "QUANT_KINDS",
]

_RANGE_KEY = "qcompile.range"
_QUANT_KEY = "qcompile.quant"

QUANT_KINDS = ("uniform", "log_sqrt2")

# −2 / ln 2: −2·log2(r) is computed as ln(r) · (−2 / ln 2), the same two operations (Log, Mul) the ONNX
# function `qcompile.QuantizeLogSqrt2` performs in float64, so the codes agree bit for bit.
_NEG_TWO_OVER_LN2 = -2.0 / np.log(2.0)
_SQRT2_MINUS_1 = np.sqrt(2.0) - 1.0


@dataclasses.dataclass(frozen=True)
class TensorRange:
    """Calibrated statistics of one activation."""

    lo: float
    hi: float
    raw_min: float
    raw_max: float
    observer: str
    samples: int
    channel_absmax: np.ndarray | None = None
    pinned: bool = False  # chosen by a reparameterization (e.g. repq-ln); later calibration keeps it

    def __post_init__(self) -> None:
        if not self.lo <= self.hi:
            raise ValueError(f"range lo={self.lo} > hi={self.hi}")


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """A quantizer: scale/zero_point arrays of shape () or (C,) along `axis`, and its `kind`.

    ``kind="uniform"``: the affine quantizer ``q = clamp(round(x / s) + z, qmin, qmax)``,
    ``x̂ = (q − z) · s``.

    ``kind="log_sqrt2"`` (RepQ-ViT's log√2 quantizer for post-Softmax activations): unsigned, per tensor,
    ``scale`` is Δ and ``zero_point`` must be 0. With ``qmax = 2^b − 1``::

        q  = clamp(round(−2·log2(x / Δ)), 0, qmax)      (x ≤ 0, or NaN: q = qmax)
        x̂  = Δ · 2^(−ceil(q/2)) · (1 + (√2 − 1)·(q mod 2))  = Δ · 2^(−q/2)   for q < qmax
        x̂  = 0                                              for q = qmax

    Deviation from RepQ-ViT's reference: it sends values whose unclamped code is ≥ 2^b to 0, which needs a
    code outside b bits. Here the top b-bit code 2^b − 1 is reserved for zero instead, so the nonzero
    levels are q ∈ [0, 2^b − 2]: one level fewer at the bottom (Δ·2^(−(2^b − 1)/2) is flushed to zero).
    Values above Δ get q = 0 (x̂ = Δ).
    """

    bits: int
    signed: bool
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None
    kind: str = "uniform"

    def __post_init__(self) -> None:
        if self.kind not in QUANT_KINDS:
            raise ValueError(f"kind must be one of {QUANT_KINDS}, got {self.kind!r}")
        if not 2 <= self.bits <= 8:
            raise ValueError(f"bits must be in 2..8 (int8/uint8 containers), got {self.bits}")
        scale = np.asarray(self.scale, dtype=np.float32)
        zero_point = np.asarray(self.zero_point, dtype=np.int32)
        if scale.shape != zero_point.shape:
            raise ValueError(f"scale shape {scale.shape} != zero point shape {zero_point.shape}")
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise ValueError("scales must be finite and positive")
        if np.any(zero_point < self.qmin) or np.any(zero_point > self.qmax):
            raise ValueError(f"zero point outside [{self.qmin}, {self.qmax}]")
        if scale.ndim > 1:
            raise ValueError(f"scales must be a scalar or a vector, got shape {scale.shape}")
        if (self.axis is None) != (scale.ndim == 0):
            raise ValueError("per-tensor specs have scalar scales; per-channel specs need an axis")
        if self.kind == "log_sqrt2":
            if self.signed:
                raise ValueError("a log_sqrt2 quantizer is unsigned (signed=False)")
            if self.axis is not None:
                raise ValueError("a log_sqrt2 quantizer is per tensor (axis None, scalar scale Δ)")
            if np.any(zero_point != 0):
                raise ValueError("a log_sqrt2 quantizer has zero_point 0")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zero_point)

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def container_is_full(self) -> bool:
        """True when the b-bit code range is the whole int8/uint8 range (no clip node needed)."""
        return self.bits == 8

    def _broadcast(self, array: np.ndarray, ndim: int) -> np.ndarray:
        if self.axis is None:
            return array
        shape = [1] * ndim
        shape[self.axis] = -1
        return array.reshape(shape)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Integer codes of `x` (int32), computed in float64, round half to even as ONNX does."""
        if self.kind == "log_sqrt2":
            return self._log_quantize(x)
        scale = self._broadcast(self.scale.astype(np.float64), x.ndim)
        zero_point = self._broadcast(self.zero_point, x.ndim)
        q = np.rint(np.asarray(x, dtype=np.float64) / scale) + zero_point
        return np.clip(q, self.qmin, self.qmax).astype(np.int32)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """Real values of integer codes, float32."""
        if self.kind == "log_sqrt2":
            return self._log_dequantize(q)
        scale = self._broadcast(self.scale, q.ndim)
        zero_point = self._broadcast(self.zero_point, q.ndim)
        return ((q.astype(np.int32) - zero_point) * scale).astype(np.float32)

    def fake_quantize(self, x: np.ndarray) -> np.ndarray:
        """dequantize(quantize(x))."""
        return self.dequantize(self.quantize(x))

    def _log_quantize(self, x: np.ndarray) -> np.ndarray:
        # Op for op what `QuantizeLogSqrt2` does in float64: Div, Greater, Where, Log, Mul, Round, Clip, Where.
        r = np.asarray(x, dtype=np.float64) / np.float64(self.scale)
        positive = r > 0
        t = np.log(np.where(positive, r, 1.0)) * _NEG_TWO_OVER_LN2
        q = np.clip(np.rint(t), 0, self.qmax)
        return np.where(positive, q, self.qmax).astype(np.int32)

    def _log_dequantize(self, q: np.ndarray) -> np.ndarray:
        # Op for op what `DequantizeLogSqrt2` does in float64: Ceil, 2·ceil − q (= q mod 2), Pow, Mul, Where.
        q = np.asarray(q).astype(np.float64)
        e = np.ceil(q / 2.0)
        odd = (e + e) - q
        y = (np.float64(self.scale) * np.power(2.0, -e)) * (1.0 + _SQRT2_MINUS_1 * odd)
        return np.where(q < self.qmax, y, 0.0).astype(np.float32)


def get_range(value: Value) -> TensorRange | None:
    """The calibrated range of `value`, or None."""
    return value.meta.get(_RANGE_KEY)


def set_range(value: Value, tensor_range: TensorRange | None) -> None:
    """Attach (or with None, remove) the calibrated range of `value`."""
    if tensor_range is None:
        value.meta.pop(_RANGE_KEY, None)
    else:
        value.meta[_RANGE_KEY] = tensor_range


def get_quant(value: Value) -> QuantSpec | None:
    """The quantizer chosen for `value`, or None."""
    return value.meta.get(_QUANT_KEY)


def set_quant(value: Value, spec: QuantSpec) -> None:
    """Attach the quantizer chosen for `value`."""
    value.meta[_QUANT_KEY] = spec


def clear_quant(value: Value) -> None:
    """Remove any quantizer from `value`."""
    value.meta.pop(_QUANT_KEY, None)


def quantized_values(graph: Graph) -> list[Value]:
    """Every value of `graph` (inputs, initializers, node outputs) that carries a QuantSpec."""
    seen: dict[int, Value] = {}
    candidates = list(graph.inputs) + list(graph.initializers.values())
    for node in graph:
        candidates += list(node.outputs)
    for value in candidates:
        if get_quant(value) is not None:
            seen[id(value)] = value
    return list(seen.values())
