"""IntactKV (Liu et al. 2024): the KV cache of a pivot prefix, computed by the full-precision model, baked into a
decoder as constants that every sequence starts from.

LLMs park huge attention scores on the first token(s) (the attention sink: [BOS], or the chat template's system
turn). Quantization errors in those tokens' keys and values reach every later token. IntactKV computes the
prefix's KV cache once with the model as it stands when the pass runs (float: run it before `quantize`,
after `rotate`, whose basis the constants then share) and keeps it lossless.

Graph surgery, for a decoder exported with a KV cache (`qcompile.zoo.lm_export`), with P the prefix length and
K_p, V_p [1, H, P, D] per layer the prefix's presents:

    past'   = Concat(Expand(K_p, [B, H, P, D]), past)     replaces every use of each past input (the Concat
                                                            with the new keys and the Shape ops that give
                                                            RoPE's position offset and the mask their past
                                                            length: positions continue after the prefix)
    present = Slice(Concat(past', new), P, ∞, axis 2)      the graph outputs leave the prefix out

so callers still feed an empty past for a prefill and the previous presents for a decode step, and every
sequence is scored or continued as if it followed the prefix. The prefix's token ids are recorded in the model's
metadata (`qcompile.intact_kv_prefix`): references must be given the same prefix (the job bakes it into the
float model it compares against), and a prompt that already starts with it is fed without it.

Not EXACT_IN_REALS: the outputs become those of prefix + sequence (LOSSY, measured). The paper's calibrated
variant (IntactKV_[P]: the constants tuned with an MSE loss on the block outputs) is not implemented.
"""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir

from qcompile.errors import InputError
from qcompile.ir import add_initializer, quant_meta
from qcompile.ir.cache_state import PAST_PREFIX, PRESENT_PREFIX
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.pass_base import Numerics, Pass, PassResult
from qcompile.pipeline.registry import register_pass

__all__ = ["IntactKvPass", "METADATA_KEY", "bake_prefix_cache", "intact_kv_prefix", "parse_prefix"]

METADATA_KEY = "qcompile.intact_kv_prefix"


def parse_prefix(prefix: str, named: dict[str, list[int]]) -> list[int]:
    """`bos`, `system` (from the task's tokenizer, `PipelineContext.prompt_prefixes`) or token ids `1+2+3` (or
    separated by spaces)."""
    text = str(prefix).strip()
    if text in named:
        return list(named[text])
    if text in ("bos", "system"):
        raise InputError(
            f"intact-kv: prefix '{text}' needs the model's tokenizer (zoo decoder LLMs have one); give token "
            "ids instead, e.g. intact-kv:prefix=1+2"
        )
    try:
        ids = [int(t) for t in text.replace("+", " ").replace(",", " ").split()]
    except ValueError:
        raise InputError(f"intact-kv: prefix must be bos, system or token ids, got {prefix!r}") from None
    if not ids or min(ids) < 0:
        raise InputError(f"intact-kv: prefix must be bos, system or non-negative token ids, got {prefix!r}")
    return ids


def intact_kv_prefix(model: ir.Model) -> list[int] | None:
    """The prefix token ids baked into `model`, or None."""
    text = model.metadata_props.get(METADATA_KEY)
    return json.loads(text) if text else None


def _pasts(model: ir.Model) -> list[ir.Value]:
    return [v for v in model.graph.inputs if (v.name or "").startswith(PAST_PREFIX)]


def _node(nodes: list[ir.Node], op: str, inputs: list[ir.Value], name: str, **attrs) -> ir.Value:
    node = ir.node(op, inputs, attributes=attrs or None, name=name)
    node.outputs[0].name = name
    nodes.append(node)
    return node.outputs[0]


def prefix_cache(model: ir.Model, ids: list[int], threads: int = 2) -> dict[str, np.ndarray]:
    """{past input name: the prefix's present [1, H, P, D]} computed by running `model` (float) on `ids`."""
    from qcompile import runtime

    pasts = _pasts(model)
    feeds = {"input_ids": np.asarray([ids], dtype=np.int64)}
    for value in pasts:
        shape = value.shape
        feeds[value.name] = np.zeros((1, shape[1], 0, shape[3]), dtype=np.float32)
    presents = [PRESENT_PREFIX + v.name[len(PAST_PREFIX) :] for v in pasts]
    outputs = runtime.run(runtime.make_session(model, threads=threads), feeds, presents)
    return {value.name: outputs[present] for value, present in zip(pasts, presents)}


def bake_prefix_cache(model: ir.Model, ids: list[int], cache: dict[str, np.ndarray]) -> None:
    """The graph surgery of the module docstring, in place."""
    length = len(ids)
    input_ids = next(v for v in model.graph.inputs if v.name == "input_ids")
    nodes: list[ir.Node] = []  # they read only inputs and constants: inserted first, in this order
    shape_of_ids = _node(nodes, "Shape", [input_ids], "intact_kv_batch_shape", start=0, end=1)
    by_name = {v.name: v for v in model.graph.outputs}
    for past in _pasts(model):
        prefix = cache[past.name].astype(np.float32)
        constant = add_initializer(model, f"intact_kv.{past.name}", prefix)
        tail = add_initializer(model, f"intact_kv.{past.name}.tail_shape", np.array(prefix.shape[1:], dtype=np.int64))
        target = _node(nodes, "Concat", [shape_of_ids, tail], f"intact_kv.{past.name}.shape", axis=0)
        expanded = _node(nodes, "Expand", [constant, target], f"intact_kv.{past.name}.expanded")
        uses = list(past.uses())
        joined = _node(nodes, "Concat", [expanded, past], f"intact_kv.{past.name}.joined", axis=2)
        for use in uses:
            use.node.replace_input_with(use.idx, joined)
        present_name = PRESENT_PREFIX + past.name[len(PAST_PREFIX) :]
        present = by_name.get(present_name)
        if present is None:
            raise InputError(f"intact-kv: the model has no output {present_name} for its input {past.name}")
        present.name = f"{present_name}.with_prefix"
        starts = add_initializer(model, f"intact_kv.{past.name}.starts", np.array([length], dtype=np.int64))
        ends = add_initializer(model, f"intact_kv.{past.name}.ends", np.array([np.iinfo(np.int64).max], dtype=np.int64))
        axes = add_initializer(model, f"intact_kv.{past.name}.axes", np.array([2], dtype=np.int64))
        cut = ir.node("Slice", [present, starts, ends, axes], name=f"intact_kv.{present_name}.cut")
        cut.outputs[0].name, cut.outputs[0].dtype = present_name, ir.DataType.FLOAT
        model.graph.insert_after(present.producer(), cut)
        index = next(i for i, v in enumerate(model.graph.outputs) if v is present)
        model.graph.outputs[index] = cut.outputs[0]
    model.graph.insert_before(model.graph.node(0), nodes)
    model.metadata_props[METADATA_KEY] = json.dumps(list(ids))


@register_pass("intact-kv")
class IntactKvPass(Pass):
    """Bake the float KV cache of a pivot prefix ([BOS] by default) into a decoder with a KV cache."""

    numerics = Numerics.LOSSY

    def __init__(self, prefix: str = "bos", context: PipelineContext | None = None) -> None:
        self.prefix = str(prefix)
        self.context = context or PipelineContext()

    def call(self, model: ir.Model) -> PassResult:
        if intact_kv_prefix(model) is not None:
            return PassResult(model, modified=False, stats={"reason": "a prefix is already baked in"})
        if any(quant_meta.get_quant(v) is not None for v in quant_meta.quantized_values(model.graph)):
            raise InputError(
                "pass 'intact-kv' must run before quantization (the prefix's KV comes from the float model)"
            )
        if not _pasts(model) or not any(v.name == "input_ids" for v in model.graph.inputs):
            raise InputError("pass 'intact-kv' needs a decoder exported with a KV cache (input_ids, past_key_values.*)")
        ids = parse_prefix(self.prefix, self.context.prompt_prefixes)
        cache = prefix_cache(model, ids, self.context.threads)
        bake_prefix_cache(model, ids, cache)
        stats = {"prefix": self.prefix, "prefix_ids": ids, "layers": len(cache) // 2}
        return PassResult(model, modified=True, stats=stats)
