"""A probe pass for `--plugin`: which linear inputs of a Llama-family decoder cost the most at 4 bits.

`only-a4:site=S` runs after a decoder `w4a4` recipe and keeps the 4-bit per-token quantizers only at one class
of activation sites, raising every other one to 8 bits (clip ratio 1): `qkv` (the attention norm's output, read
by q/k/v), `o` (o_proj's input), `gateup` (the MLP norm's output, read by gate/up) or `down` (down_proj's input,
the SwiGLU product; told from o_proj by its input width, the larger one). Used for the site table of
docs/methods/per-token.md:

    qcompile zoo:smollm2-135m --plugin benchmarks/llm_a4_sites_plugin.py \
        --passes rotate,w4a4:weight_bits=8,only-a4:site=S -o out --force --no-baselines --calib-samples 8
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from qcompile.ir import quant_meta
from qcompile.pipeline.pass_base import Numerics, Pass, PassResult
from qcompile.pipeline.registry import register_pass

SITES = ("qkv", "o", "gateup", "down")


def _linears(value: ir.Value) -> list[ir.Node]:
    return [
        node
        for node in value.consumers()
        if node.op_type == "MatMul" and node.inputs[0] is value and node.inputs[1].const_value is not None
    ]


def site_classes(model: ir.Model) -> dict[str, str]:
    """Value name → site class for every 4-bit per-token activation quantizer."""
    values = {}
    for node in model.graph:
        value = node.inputs[0] if node.inputs else None
        spec = quant_meta.get_quant(value) if value is not None else None
        if spec is not None and spec.kind == "uniform_token" and spec.bits == 4:
            values[value.name] = value
    linears = {name: _linears(value) for name, value in values.items()}
    single_widths = sorted({users[0].inputs[1].const_value.shape[0] for users in linears.values() if len(users) == 1})
    by_count = {3: "qkv", 2: "gateup"}
    classes = {}
    for name, users in linears.items():
        if len(users) == 1:
            wide = len(single_widths) > 1 and users[0].inputs[1].const_value.shape[0] == single_widths[-1]
            classes[name] = "down" if wide else "o"
        else:
            classes[name] = by_count.get(len(users), "other")
    return classes


@register_pass("only-a4")
class OnlyA4Pass(Pass):
    """Keep 4-bit per-token activations at one site class; the others become 8-bit."""

    numerics = Numerics.LOSSY

    def __init__(self, site: str = "down") -> None:
        if site not in SITES:
            raise ValueError(f"site must be one of {', '.join(SITES)}, got {site!r}")
        self.site = site

    def call(self, model: ir.Model) -> PassResult:
        classes = site_classes(model)
        counts: dict[str, int] = {}
        for node in model.graph:
            for value in node.inputs[:1]:
                if value is None or value.name not in classes:
                    continue
                spec = quant_meta.get_quant(value)
                if spec.bits == 4 and classes[value.name] != self.site:
                    quant_meta.set_quant(value, dataclasses.replace(spec, bits=8, clip_ratio=1.0))
        for site in classes.values():
            counts[site] = counts.get(site, 0) + 1
        return PassResult(model, modified=True, stats={"sites": counts, "kept_4_bit": self.site})
