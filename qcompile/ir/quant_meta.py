"""Typed quantization facts attached to IR values.

Three kinds of fact, each stored in `Value.meta` under one key and read only through the accessors below:

* `TensorRange` — what calibration observed for a value: the clipping range [lo, hi] chosen by an
  observer, the raw min/max, and (optionally) the per-channel max|x| along the last axis.
* `QuantSpec` — the quantizer chosen for a value, one of three kinds:

  - ``kind="uniform"`` (the default): ``q = clamp(round(x / scale) + zero_point, qmin, qmax)``,
    ``x̂ = (q - zero_point) * scale``, per tensor (`axis is None`), per channel along `axis`, or per group
    (`group_size` G: one scale/zero point per G consecutive elements along `axis`, per index of the other
    axes; scale shape = the value's shape with `axis` divided by G; for weights W[K, N], axis 0).
  - ``kind="uniform_token"``: dynamic per-token quantization of an activation, the scale (and zero point)
    computed at run time for every row (the last axis reduced), see `QuantSpec.token_params`; `scale` and
    `zero_point` are the placeholders 1 and 0, `clip_ratio` scales the row's range.
  - ``kind="log_sqrt2"``: RepQ-ViT's log√2 quantizer for post-Softmax activations (values in [0, 1]),
    unsigned, per tensor, ``scale`` = Δ, ``zero_point`` = 0. Codes ``q = clamp(round(−2·log2(x / Δ)), 0,
    2^b − 1)``; the top code 2^b − 1 means exactly 0 (x ≤ 0 maps to it), the others dequantize to
    ``x̂ = Δ · 2^(−q/2)``, computed in the reparameterized form ``Δ · 2^(−ceil(q/2)) · (1 + (√2 − 1)·(q mod 2))``
    (RepQ-ViT §3.3). See `QuantSpec` for the one deviation from RepQ-ViT's reference.

* a **learned clip ratio** (`set_learned_clip_ratio`): the per-token clip ratio a transform pass trained for
  an activation (FlatQuant's LAC); `quantize` with per-token activations uses it for that value instead of
  its own ratio or search.

  `bits` may be below the container's width (int8/uint8 hold 2..8-bit codes); `qmin`/`qmax` are the b-bit
  limits, not the container's. Rounding is half to even, as ONNX Round/QuantizeLinear do.

Backends turn uniform `QuantSpec`s into QuantizeLinear/DequantizeLinear nodes (per-group ones into the
standard-op form of a blocked DequantizeLinear, or on request one with `block_size`), per-token ones into the
standard ops that compute the row scales, and log√2 ones into the model-local functions of
`qcompile.runtime.log_quant`; passes never write QDQ nodes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from onnx_ir import Graph, Value

from qcompile.math.fp_formats import fp_format, fp_round

__all__ = [
    "TensorRange",
    "QuantSpec",
    "get_range",
    "set_range",
    "get_quant",
    "set_quant",
    "clear_quant",
    "get_learned_clip_ratio",
    "set_learned_clip_ratio",
    "quantized_values",
    "QUANT_KINDS",
    "FP_KINDS",
    "TOKEN_MIN_SCALE",
]

_RANGE_KEY = "qcompile.range"
_QUANT_KEY = "qcompile.quant"
_CLIP_KEY = "qcompile.learned_clip_ratio"

QUANT_KINDS = ("uniform", "log_sqrt2", "uniform_token", "fp", "fp_token")
FP_KINDS = ("fp", "fp_token")
TOKEN_MIN_SCALE = np.float32(1e-12)  # guards all-zero rows of per-token quantizers: s = max(s, tiny)

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

    ``kind="uniform_token"`` (dynamic per-token activations; rows = every index of the leading axes, the
    last axis reduced; computed in float32, op for op what `qcompile.runtime.qdq` writes, tiny = 1e-12, r =
    `clip_ratio`):

    * symmetric (``signed=True``, codes in [−qmax, qmax], qmax = 2^(b−1) − 1, zero point 0)::

        s = max(r · max|x_row| / qmax, tiny),   q = clamp(round(x / s), −qmax, qmax),   x̂ = q · s

    * asymmetric (``signed=False``, codes in [0, L], L = 2^b − 1; the row's range widened to contain 0)::

        lo = r · min(min x_row, 0),   hi = r · max(max x_row, 0),   s = max((hi − lo) / L, tiny)
        z = clamp(round(−lo / s), 0, L),   q = clamp(round(x / s) + z, 0, L),   x̂ = (q − z) · s

    ``kind="fp"`` / ``kind="fp_token"`` (LLM-FP4's floating-point quantizers, `qcompile.math.fp_formats`):
    ``fp_format`` names the grid (e2m1, e3m0, e1m2, e4m3, e5m2), ``bits`` is its width, signed, zero points 0.
    ``x̂ = s · fp_round(x / s)`` with s the scale (per tensor, or per channel along `axis`) for "fp"; for
    "fp_token" each row's ``s = max(r · max|x_row| / max_value, tiny)``, computed at run time. Float32, op for
    op what `qcompile.runtime.fp_qdq` writes. There are no integer codes: `quantize`/`dequantize` refuse.

    Per-group (``group_size`` G, uniform kind): ``scale``/``zero_point`` have the value's rank, with
    ⌈shape[axis] / G⌉ entries along `axis`; element i along `axis` uses entry i // G (ONNX blocked
    quantization, `DequantizeLinear(..., axis, block_size=G)`). When G does not divide shape[axis] the last
    group is shorter (ragged): SmolLM2's 576 input channels in groups of 128 are 4 groups of 128 and one of 64.
    """

    bits: int
    signed: bool
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None
    kind: str = "uniform"
    group_size: int | None = None
    clip_ratio: float = 1.0
    fp_format: str | None = None  # "fp"/"fp_token" kinds: the grid's name (qcompile.math.fp_formats)

    @classmethod
    def per_token(cls, bits: int, symmetric: bool = True, clip_ratio: float = 1.0) -> QuantSpec:
        """A dynamic per-token quantizer (``kind="uniform_token"``): symmetric signed or asymmetric unsigned."""
        return cls(
            bits=bits,
            signed=symmetric,
            scale=np.float32(1.0),
            zero_point=np.int32(0),
            kind="uniform_token",
            clip_ratio=clip_ratio,
        )

    @classmethod
    def fp(cls, fmt: str, scale: np.ndarray | float, axis: int | None = None) -> QuantSpec:
        """A static floating-point quantizer onto grid `fmt` with `scale` (per tensor, or per channel on `axis`)."""
        scale = np.asarray(scale, dtype=np.float32)
        return cls(fp_format(fmt).bits, True, scale, np.zeros(scale.shape, np.int32), axis, "fp", fp_format=fmt)

    @classmethod
    def fp_per_token(cls, fmt: str, clip_ratio: float = 1.0) -> QuantSpec:
        """A dynamic per-token floating-point quantizer onto grid `fmt`."""
        bits = fp_format(fmt).bits
        return cls(bits, True, np.float32(1.0), np.int32(0), kind="fp_token", clip_ratio=clip_ratio, fp_format=fmt)

    @property
    def is_dynamic(self) -> bool:
        """True when the scale is computed at run time (per token), not stored in the spec."""
        return self.kind in ("uniform_token", "fp_token")

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
        if self.group_size is not None:
            if self.kind != "uniform" or self.axis is None or scale.ndim < 1 or int(self.group_size) < 1:
                raise ValueError(
                    "a per-group spec is uniform, has an axis, scales of the value's rank, group_size >= 1"
                )
            if not -scale.ndim <= self.axis < scale.ndim:
                raise ValueError(f"axis {self.axis} out of range for group scales of shape {scale.shape}")
            object.__setattr__(self, "group_size", int(self.group_size))
        elif scale.ndim > 1:
            raise ValueError(f"scales must be a scalar or a vector, got shape {scale.shape}")
        if self.group_size is None and (self.axis is None) != (scale.ndim == 0):
            raise ValueError("per-tensor specs have scalar scales; per-channel specs need an axis")
        if self.kind in FP_KINDS:
            fmt = fp_format(self.fp_format or "")
            if self.bits != fmt.bits or not self.signed or np.any(zero_point != 0) or self.group_size is not None:
                raise ValueError(f"an {self.kind} spec on {fmt.name} has bits {fmt.bits}, signed, zero points 0")
        elif self.fp_format is not None:
            raise ValueError("fp_format applies to fp and fp_token specs only")
        if self.kind in ("uniform_token", "fp_token"):
            if self.axis is not None or scale.shape != () or scale != 1 or zero_point != 0:
                raise ValueError(f"a {self.kind} spec has no axis and the placeholders scale 1, zero_point 0")
            if not 0 < float(self.clip_ratio) <= 1:
                raise ValueError(f"clip_ratio must be in (0, 1], got {self.clip_ratio}")
        elif self.clip_ratio != 1.0:
            raise ValueError("clip_ratio applies to uniform_token and fp_token specs only")
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

    @property
    def token_qmax(self) -> int:
        """The largest code magnitude of a symmetric per-token spec: 2^(b−1) − 1 (−2^(b−1) unused)."""
        return 2 ** (self.bits - 1) - 1

    def broadcast(self, array: np.ndarray, ndim: int, length: int | None = None) -> np.ndarray:
        """`array` (shaped like `scale`) broadcastable against a value of rank `ndim` (groups repeated, cut
        to `length` elements along the axis when the last group is ragged)."""
        return self._broadcast(array, ndim, length)

    def _broadcast(self, array: np.ndarray, ndim: int, length: int | None = None) -> np.ndarray:
        if self.axis is None:
            return array
        if self.group_size is not None:
            repeated = np.repeat(array, self.group_size, axis=self.axis)
            return repeated if length is None else np.take(repeated, np.arange(length), axis=self.axis)
        shape = [1] * ndim
        shape[self.axis] = -1
        return array.reshape(shape)

    def _length(self, shape: tuple[int, ...]) -> int | None:
        """The extent along a per-group spec's axis (None for other specs)."""
        return shape[self.axis] if self.group_size is not None and self.axis is not None else None

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Integer codes of `x` (int32), computed in float64, round half to even as ONNX does."""
        if self.kind in FP_KINDS:
            raise ValueError(f"an {self.kind} spec has no integer codes: use fake_quantize(x)")
        if self.kind == "log_sqrt2":
            return self._log_quantize(x)
        if self.kind == "uniform_token":
            return self._token_quantize(np.asarray(x, dtype=np.float32))[0]
        length = self._length(np.shape(x))
        scale = self._broadcast(self.scale.astype(np.float64), np.ndim(x), length)
        zero_point = self._broadcast(self.zero_point, np.ndim(x), length)
        q = np.rint(np.asarray(x, dtype=np.float64) / scale) + zero_point
        return np.clip(q, self.qmin, self.qmax).astype(np.int32)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """Real values of integer codes, float32."""
        if self.kind in FP_KINDS:
            raise ValueError(f"an {self.kind} spec has no integer codes: use fake_quantize(x)")
        if self.kind == "log_sqrt2":
            return self._log_dequantize(q)
        if self.kind == "uniform_token":
            raise ValueError("a uniform_token spec's scales depend on x: use fake_quantize(x) or token_params(x)")
        length = self._length(q.shape)
        scale = self._broadcast(self.scale, q.ndim, length)
        zero_point = self._broadcast(self.zero_point, q.ndim, length)
        return ((q.astype(np.int32) - zero_point) * scale).astype(np.float32)

    def fake_quantize(self, x: np.ndarray) -> np.ndarray:
        """dequantize(quantize(x)) (for uniform_token specs with the row scales of x; for fp kinds s·fp_round(x/s))."""
        if self.kind in FP_KINDS:
            x = np.asarray(x, dtype=np.float32)
            scale = self.fp_scale(x)
            return (fp_round(x / scale, fp_format(self.fp_format)) * scale).astype(np.float32)
        if self.kind == "uniform_token":
            q, scale, zero_point = self._token_quantize(np.asarray(x, dtype=np.float32))
            return ((q.astype(np.float32) - zero_point) * scale).astype(np.float32)
        return self.dequantize(self.quantize(x))

    def fp_scale(self, x: np.ndarray) -> np.ndarray:
        """The scale an fp spec applies to `x` (float32, broadcastable): the stored one, or per row for fp_token
        (op for op: Abs, ReduceMax, Mul by r, Div by the format's max, Max with tiny)."""
        if self.kind == "fp":
            return self._broadcast(self.scale, np.ndim(x))
        absmax = np.max(np.abs(np.asarray(x, dtype=np.float32)), axis=-1, keepdims=True)
        if self.clip_ratio != 1.0:
            absmax = absmax * np.float32(self.clip_ratio)
        return np.maximum(absmax / np.float32(fp_format(self.fp_format).max_value), TOKEN_MIN_SCALE)

    def token_params(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-row float32 scale and zero point (shape x.shape[:-1] + (1,)) of a uniform_token spec."""
        _, scale, zero_point = self._token_quantize(np.asarray(x, dtype=np.float32))
        return scale, zero_point

    def _token_quantize(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Op for op (float32) what `qcompile.runtime.qdq` writes: Abs, ReduceMax, Mul, Div, Max, Div, Round, Clip.
        ratio = np.float32(self.clip_ratio)
        with np.errstate(invalid="ignore"):
            if self.signed:
                top = np.float32(self.token_qmax)
                absmax = np.max(np.abs(x), axis=-1, keepdims=True)
                scale = np.maximum((absmax * ratio) / top, TOKEN_MIN_SCALE)
                q = np.clip(np.rint(x / scale), -top, top)
                return q.astype(np.int32), scale, np.zeros_like(scale)
            levels = np.float32(2**self.bits - 1)
            lo = np.minimum(np.min(x, axis=-1, keepdims=True), np.float32(0)) * ratio
            hi = np.maximum(np.max(x, axis=-1, keepdims=True), np.float32(0)) * ratio
            scale = np.maximum((hi - lo) / levels, TOKEN_MIN_SCALE)
            zero_point = np.clip(np.rint(-lo / scale), np.float32(0), levels)
            q = np.clip(np.rint(x / scale) + zero_point, np.float32(0), levels)
        return q.astype(np.int32), scale, zero_point

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


def get_learned_clip_ratio(value: Value) -> float | None:
    """The per-token clip ratio a transform pass learned for `value`, or None."""
    return value.meta.get(_CLIP_KEY)


def set_learned_clip_ratio(value: Value, ratio: float) -> None:
    """Record a learned per-token clip ratio in (0, 1] for `value`."""
    if not 0 < ratio <= 1:
        raise ValueError(f"a clip ratio must be in (0, 1], got {ratio}")
    value.meta[_CLIP_KEY] = float(ratio)


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
