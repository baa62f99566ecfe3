"""The KV-cache sites of a decoder exported with a cache (`qcompile.zoo.lm_export`).

Per layer i, the exporter writes the cache update as two Concats along the sequence axis:

    present.{i}.key   = Concat(past_key_values.{i}.key,   k)     k: the new keys after RoPE [B, H_kv, T, D]
    present.{i}.value = Concat(past_key_values.{i}.value, v)     v: the new values           [B, H_kv, T, D]

and the attention reads the present keys through shape-only ops (GQA's Unsqueeze/Expand/Reshape repeat, the
Transpose to Kᵀ) as the second input of the score MatMul S = Q · Kᵀ, whose first input is the query after
RoPE (and the 1/√D scale). A `KvSite` holds both Concats, the new k and v, and that score MatMul: where KV
quantization quantizes (k, v per head and token) and where a per-head rotation of Q and K is exact
(S = (Q R)(K R)ᵀ for orthogonal R, over the last axis D of both). With an intact-kv prefix baked in, the past
reaches the cache Concat through the prefix join Concat(Expand(prefix), past).
"""

from __future__ import annotations

import dataclasses
import re

import onnx_ir as ir

__all__ = ["KvSite", "find_kv_sites"]

_PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)$")
_SHAPE_OPS = {"Unsqueeze", "Expand", "Reshape", "Transpose", "Squeeze", "Identity", "Tile"}


@dataclasses.dataclass
class KvSite:
    layer: int
    key_concat: ir.Node
    value_concat: ir.Node
    scores: ir.Node  # MatMul(Q, Kᵀ) reading the present keys as input 1
    head_dim: int

    @property
    def new_key(self) -> ir.Value:
        return self.key_concat.inputs[1]

    @property
    def new_value(self) -> ir.Value:
        return self.value_concat.inputs[1]


def _is_prefix_join(node: ir.Node, index: int) -> bool:
    """Concat(Expand(constant prefix cache), past) along the sequence: an intact-kv prefix in front of the past."""
    if index != 1 or len(node.inputs) != 2 or node.inputs[0] is None:
        return False
    expand = node.inputs[0].producer()
    return expand is not None and expand.op_type == "Expand" and expand.inputs[0].const_value is not None


def _cache_concat(past: ir.Value) -> ir.Node | None:
    """The Concat(past, new) reading `past` (through an intact-kv prefix join); other readers may only take its
    shape (the past length)."""
    value = past
    for _ in range(2):
        uses = [u for u in value.uses() if u.node.op_type != "Shape"]
        if len(uses) != 1 or uses[0].node.op_type != "Concat":
            return None
        node, index = uses[0].node, uses[0].idx
        if _is_prefix_join(node, index):
            value = node.outputs[0]
            continue
        if index != 0 or len(node.inputs) != 2 or node.inputs[1] is None:
            return None
        return node
    return None


def _score_matmul(keys: ir.Value) -> ir.Node | str:
    """The MatMul reading `keys` (through shape-only ops) as its second input."""
    found, frontier = [], [keys]
    while frontier:
        value = frontier.pop()
        for use in value.uses():
            node = use.node
            if node.op_type == "MatMul" and use.idx == 1:
                found.append(node)
            elif node.op_type in _SHAPE_OPS and use.idx == 0:
                frontier.extend(node.outputs)
    if len(found) != 1:
        return f"the cached keys reach {len(found)} score MatMuls through shape ops, expected 1"
    return found[0]


def find_kv_sites(model: ir.Model) -> tuple[list[KvSite], dict[str, str]]:
    """Every layer's KV site, and {layer: reason} for cache inputs that do not form one."""
    pasts: dict[int, dict[str, ir.Value]] = {}
    for value in model.graph.inputs:
        match = _PAST.match(value.name or "")
        if match:
            pasts.setdefault(int(match.group(1)), {})[match.group(2)] = value
    sites, skipped = [], {}
    for layer in sorted(pasts):
        pair = pasts[layer]
        if set(pair) != {"key", "value"}:
            skipped[f"layer {layer}"] = "the cache has a key or a value input only"
            continue
        concats = {kind: _cache_concat(value) for kind, value in pair.items()}
        if any(c is None for c in concats.values()):
            skipped[f"layer {layer}"] = "a past input is not read by one Concat(past, new) (and Shape ops) alone"
            continue
        scores = _score_matmul(concats["key"].outputs[0])
        if isinstance(scores, str):
            skipped[f"layer {layer}"] = scores
            continue
        shape = pair["key"].shape
        head_dim = shape[-1] if shape is not None and len(shape) == 4 else None
        if not isinstance(head_dim, int):
            skipped[f"layer {layer}"] = "the past key has no static head size"
            continue
        sites.append(KvSite(layer, concats["key"], concats["value"], scores, head_dim))
    return sites, skipped
