"""`fp-quantize`: LLM-FP4 (Liu et al. 2023): floating-point weights and activations, formats and scales searched.

Every activation X read by linears (MatMul with a constant 2-D weight, or Gemm) is a **site**; `fp_search`
chooses per site one format from the candidates (4 bits: E2M1, E3M0, E1M2; 8 bits: E4M3, E5M2), the
activation's scale (per tensor with the pre-shifted per-channel exponent biases, or a clip ratio for dynamic
per-token scales) and each weight's per-output-channel scales, minimising the sites' linears' output error on
calibration rows (`rows` rows drawn from the first `samples` calibration samples of the float model). The
result is `QuantSpec`s of kinds "fp" / "fp_token" that `to_qdq` writes as ONNX (`qcompile.runtime.fp_qdq`).

Like the uniform LLM recipes, `keep_head_float` leaves linears whose output is a graph output float (the LM
head), and products of two activations (attention) and the KV cache stay float (LLM-FP4 quantizes neither).
LLM-FP4 also quantizes the embedding table; here it stays float (documented in docs/methods/fp-quantize.md).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from tqdm import tqdm

from qcompile.calibration.runner import stream_statistics
from qcompile.errors import InputError
from qcompile.ir import quant_meta
from qcompile.ir.properties import Property
from qcompile.math.fp_formats import FORMATS, FORMATS_BY_BITS
from qcompile.passes.quantize.fp_search import search_site
from qcompile.pipeline.context import CalibrationData, PipelineContext
from qcompile.pipeline.pass_base import Numerics, Pass, PassResult
from qcompile.pipeline.registry import register_pass

__all__ = ["FpQuantizePass", "ACT_GRANULARITIES"]

ACT_GRANULARITIES = ("tensor", "token")


class _RowSampler:
    """Keeps up to `per_batch` random rows of every batch, at most `limit` in all."""

    def __init__(self, per_batch: int, limit: int, seed: int) -> None:
        self.per_batch, self.limit, self.rows = per_batch, limit, []
        self._rng = np.random.default_rng(seed)
        self.count = 0

    def update(self, array: np.ndarray) -> None:
        rows = np.asarray(array, dtype=np.float32).reshape(-1, np.shape(array)[-1])
        take = min(self.per_batch, len(rows), self.limit - self.count)
        if take > 0:
            self.rows.append(rows[self._rng.choice(len(rows), take, replace=False)])
            self.count += take

    def array(self) -> np.ndarray:
        return np.concatenate(self.rows)


def _weight_matrix(node: ir.Node) -> tuple[np.ndarray, int] | None:
    """The linear's weight as [K, N] and the output-channel axis of the stored weight; None if unsupported."""
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if weight is None or weight.const_value is None or weight.const_value.numpy().ndim != 2:
        return None
    array = weight.const_value.numpy().astype(np.float32)
    if node.op_type == "Gemm":
        if node.attributes.get_int("transA", 0):
            return None
        if node.attributes.get_int("transB", 0):
            return array.T, 0
    return array, 1


@register_pass("fp-quantize")
class FpQuantizePass(Pass):
    """Floating-point quantizers (LLM-FP4) on every linear's weight and input, formats and scales searched."""

    establishes = frozenset({Property.QUANTIZED})
    numerics = Numerics.LOSSY

    def __init__(
        self,
        bits: int = 4,
        formats: str = "",
        act_granularity: str = "tensor",
        act_shift: bool = True,
        rounds: int = 2,
        samples: int = 32,
        rows: int = 512,
        keep_head_float: bool = True,
        context: PipelineContext | None = None,
    ) -> None:
        if int(bits) not in FORMATS_BY_BITS:
            raise ValueError(f"fp-quantize bits must be one of {', '.join(map(str, FORMATS_BY_BITS))}, got {bits}")
        self.bits = int(bits)
        names = tuple(f for f in str(formats).replace("+", " ").replace(";", " ").split() if f)
        self.formats = names or FORMATS_BY_BITS[self.bits]
        for name in self.formats:
            if name not in FORMATS or FORMATS[name].bits != self.bits:
                known = ", ".join(FORMATS_BY_BITS[self.bits])
                raise ValueError(f"fp-quantize formats at {self.bits} bits are {known} (joined by +), got {name!r}")
        if act_granularity not in ACT_GRANULARITIES:
            raise ValueError(f"act_granularity must be one of {', '.join(ACT_GRANULARITIES)}, got {act_granularity}")
        self.act_granularity, self.act_shift = act_granularity, bool(act_shift)
        if int(rounds) < 0 or int(samples) < 1 or int(rows) < 1:
            raise ValueError("fp-quantize needs rounds >= 0, samples >= 1 and rows >= 1")
        self.rounds, self.samples, self.rows = int(rounds), int(samples), int(rows)
        self.keep_head_float = bool(keep_head_float)
        self.context = context or PipelineContext()

    def _sites(self, model: ir.Model) -> tuple[dict[str, tuple[ir.Value, list]], dict[str, str]]:
        """Activation name → (value, [(node, weight [K, N], channel axis)]), and why linears were left out."""
        sites: dict[str, tuple[ir.Value, list]] = {}
        skipped: dict[str, str] = {}
        outputs = {id(v) for v in model.graph.outputs}
        for node in model.graph:
            if node.op_type not in ("MatMul", "Gemm") or node.domain not in ("", "ai.onnx"):
                continue
            if self.keep_head_float and any(id(o) in outputs for o in node.outputs):
                skipped[node.name] = "kept float: its output is a graph output (the model's head)"
                continue
            x = node.inputs[0]
            if x is None or x.const_value is not None or len(node.inputs) < 2 or node.inputs[1].const_value is None:
                continue  # a product of two activations, or a constant input: stays float
            if quant_meta.get_quant(x) is not None or quant_meta.get_quant(node.inputs[1]) is not None:
                skipped[node.name] = "already quantized"
                continue
            weight = _weight_matrix(node)
            if weight is None:
                skipped[node.name] = "the weight is not a 2-D matrix of a MatMul or Gemm without transA"
                continue
            sites.setdefault(x.name, (x, []))[1].append((node, *weight))
        return sites, skipped

    def call(self, model: ir.Model) -> PassResult:
        if self.context.calibration is None:
            raise InputError("fp-quantize searches its formats and scales on calibration data (none was given)")
        sites, skipped = self._sites(model)
        if not sites:
            raise InputError("fp-quantize found no linear (MatMul/Gemm with a constant weight) to quantize")
        batches = max(1, -(-min(self.samples, self.context.calibration.samples) // 8))  # at the job's batch of 8
        per_batch = max(1, -(-self.rows // batches))  # rows drawn from each batch, so every batch contributes
        data = self.context.calibration
        if data.samples > self.samples:
            data = _first_samples(data, self.samples)
        names = list(sites)
        observers, _ = stream_statistics(
            model,
            data,
            names,
            lambda name: _RowSampler(per_batch, self.rows, self.context.seed + names.index(name)),
            channel_stats=False,
            threads=self.context.threads,
            progress=self.context.progress,
        )
        report = {}
        for name in tqdm(names, desc="fp-quantize", unit="site", disable=not self.context.progress, leave=False):
            value, linears = sites[name]
            choice = search_site(
                observers[name].array(),
                [w for _, w, _ in linears],
                self.formats,
                self.act_granularity,
                self.act_shift,
                self.rounds,
            )
            quant_meta.set_quant(value, choice.act_spec)
            for (node, _, axis), spec in zip(linears, choice.weight_specs):
                if axis == 0:  # Gemm transB: the stored weight is [N, K]
                    spec = quant_meta.QuantSpec.fp(spec.fp_format, spec.scale, axis=0)
                quant_meta.set_quant(node.inputs[1], spec)
            report[name] = {
                "format": choice.fmt,
                "linears": len(linears),
                "relative_error": round(choice.error, 6),
                "errors_by_format": choice.errors_by_format,
                **({"clip_ratio": choice.act_spec.clip_ratio} if self.act_granularity == "token" else {}),
            }
        formats: dict[str, int] = {}
        for entry in report.values():
            formats[entry["format"]] = formats.get(entry["format"], 0) + 1
        stats = {"sites": report, "formats": formats, "skipped": skipped, "rows": self.rows, "samples": data.samples}
        return PassResult(model, modified=True, stats=stats)


def _first_samples(data: CalibrationData, samples: int) -> CalibrationData:
    """The first `samples` samples of calibration data (batches cut at the limit)."""

    def batches():
        taken = 0
        for feeds in data.batches():
            count = min(next(iter(feeds.values())).shape[0], samples - taken)
            if count <= 0:
                return
            yield {k: v[:count] for k, v in feeds.items()}
            taken += count

    return CalibrationData(batches=batches, samples=samples)
