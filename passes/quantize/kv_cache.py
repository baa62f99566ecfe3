"""KV-cache quantization: the keys (after RoPE, and after `rotate`'s per-head Hadamard) and values that enter
a decoder's cache, quantized per head and token (QuaRot's KV setting: one group = one head's D channels).

For every layer's cache site (`transforms.kv_sites`), the new keys k and values v [B, H_kv, T, D] get a dynamic
per-token quantizer over their last axis, i.e. one scale (and zero point) per batch, head and token, computed
in the graph from the row itself (`QuantSpec.per_token`; asymmetric by default, codes 0..2^b − 1):

    lo = r·min(min k_row, 0),  hi = r·max(max k_row, 0),  s = (hi − lo) / (2^b − 1),  z = round(−lo / s)
    k̂ = (clamp(round(k / s) + z, 0, 2^b − 1) − z) · s

with r = `clip_ratio`; `clip_ratio=search` picks r per cache site (each layer's keys, each layer's values)
from the calibration data by the rows' squared error (`qcompile.calibration.token_clip`, channel weights 1).
The cache then holds k̂ and v̂: what the attention reads now and at every later decode step. The exported
artifact stores the codes with their scales and zero points as the cache tensors (`qcompile.runtime.kv_storage`;
internal checks use the fake-quantized form, with the same numerics). Prefill and decode quantize each token
once, when it enters the cache, so both see the same values. LOSSY; it establishes QUANTIZED.
"""

from __future__ import annotations

import onnx_ir as ir

from qcompile.calibration.token_clip import search_token_clip
from qcompile.errors import InputError
from qcompile.ir import quant_meta
from qcompile.ir.properties import Property
from qcompile.passes.transforms.kv_sites import find_kv_sites
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.pass_base import Numerics, Pass, PassResult
from qcompile.pipeline.registry import register_pass

__all__ = ["KvCacheQuantPass"]


@register_pass("kv-quant")
class KvCacheQuantPass(Pass):
    """Per-head, per-token dynamic quantization of the keys and values entering the KV cache."""

    numerics = Numerics.LOSSY
    establishes = frozenset({Property.QUANTIZED})

    def __init__(
        self,
        bits: int = 8,
        symmetric: bool = False,
        clip_ratio: float | str = 1.0,
        keys: bool = True,
        values: bool = True,
        context: PipelineContext | None = None,
    ) -> None:
        if not 2 <= int(bits) <= 8:
            raise ValueError(f"bits must be in 2..8, got {bits}")
        self.clip_search = clip_ratio == "search"
        if not self.clip_search and not (isinstance(clip_ratio, (int, float)) and 0 < clip_ratio <= 1):
            raise ValueError(f"clip_ratio must be in (0, 1] or 'search', got {clip_ratio!r}")
        if not (keys or values):
            raise ValueError("kv-quant with keys=false and values=false quantizes nothing")
        self.bits, self.symmetric = int(bits), bool(symmetric)
        self.clip_ratio = 1.0 if self.clip_search else float(clip_ratio)
        self.keys, self.values = bool(keys), bool(values)
        self.context = context or PipelineContext()

    def _clip_ratios(self, model: ir.Model, values: list[ir.Value]) -> dict[str, float]:
        if not self.clip_search or not values:
            return {value.name: self.clip_ratio for value in values}
        if self.context.calibration is None:
            raise InputError("kv-quant with clip_ratio=search needs calibration data (none was given)")
        return search_token_clip(
            model,
            {value.name: None for value in values},
            self.bits,
            self.symmetric,
            self.context.calibration,
            seed=self.context.seed,
            threads=self.context.threads,
            progress=self.context.progress,
        )

    def call(self, model: ir.Model) -> PassResult:
        sites, skipped = find_kv_sites(model)
        if not sites:
            reason = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "no past_key_values.* inputs"
            raise InputError(f"pass 'kv-quant' needs a decoder exported with a KV cache ({reason})")
        chosen = [
            value
            for site in sites
            for wanted, value in ((self.keys, site.new_key), (self.values, site.new_value))
            if wanted and quant_meta.get_quant(value) is None
        ]
        ratios = self._clip_ratios(model, chosen)
        for value in chosen:
            quant_meta.set_quant(value, quant_meta.QuantSpec.per_token(self.bits, self.symmetric, ratios[value.name]))
        quantized = len(chosen)
        stats = {
            "layers": len(sites),
            "quantized": quantized,
            "bits": self.bits,
            "symmetric": self.symmetric,
            "clip_ratio": "search" if self.clip_search else self.clip_ratio,
            **({"clip_ratios": ratios} if self.clip_search else {}),
            "head_dim": sorted({s.head_dim for s in sites}),
            "skipped": skipped,
        }
        return PassResult(model, modified=quantized > 0, stats=stats)
