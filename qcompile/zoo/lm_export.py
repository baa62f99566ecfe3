"""Causal LMs as one ONNX decoder with a KV cache: the same graph serves prefill and decode.

`export_causal_lm` exports a Hugging Face causal LM with ``torch.onnx.export(..., dynamo=True)``:

    inputs   input_ids                      int64   [batch, sequence]
             past_key_values.{i}.key        float32 [batch, kv_heads, past, head_dim]   (i = 0 .. layers − 1)
             past_key_values.{i}.value      float32 [batch, kv_heads, past, head_dim]
    outputs  logits                         float32 [batch, sequence, vocab]
             present.{i}.key / .value       float32 [batch, kv_heads, past + sequence, head_dim]

(the names optimum and ONNX Runtime GenAI use). Keys are stored after RoPE; positions continue from
``past`` (transformers' cache position), and the causal mask covers the past. **Prefill** feeds an empty
past (``past = 0``): the logits of a window are those of the model without a cache, which is how
perplexity is scored; **decode** feeds one token and the previous step's presents. Attention is exported in
its eager form (SDPA's ``is_causal`` does not export as a symbolic bool).

The file and its ``.data`` are written into a hidden folder next to the target and renamed into place,
so an interrupted export leaves nothing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx_ir as ir

from qcompile.ir.cache_state import PAST_PREFIX, PRESENT_PREFIX

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "CacheEntry",
    "KvCache",
    "complete_prefill_feeds",
    "kv_cache_of_session",
    "export_causal_lm",
    "kv_cache_of",
    "past_name",
    "prefill_feeds",
    "present_name",
]

INPUT_NAME = "input_ids"
OUTPUT_NAME = "logits"


def past_name(layer: int, kind: str) -> str:
    return f"{PAST_PREFIX}{layer}.{kind}"


def present_name(layer: int, kind: str) -> str:
    return f"{PRESENT_PREFIX}{layer}.{kind}"


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """One past input and the present output that feeds it at the next step: [batch, a, past, b] of `dtype`
    (keys and values: a = kv_heads, b = head_dim; a quantized cache's scales: b = 1)."""

    past: str
    present: str
    dtype: str  # a NumPy dtype name
    a: int
    b: int


@dataclasses.dataclass(frozen=True)
class KvCache:
    """The KV-cache interface of an exported decoder: per layer, (kv_heads, head_dim) of its key and value,
    and every past input with its present output (float32 keys/values, or codes with their scales when the
    artifact stores a quantized cache, `qcompile.runtime.kv_storage`)."""

    layers: int
    heads: int
    head_dim: int
    entries: tuple[CacheEntry, ...]

    def inputs(self) -> list[str]:
        return [e.past for e in self.entries]

    def outputs(self) -> list[str]:
        return [e.present for e in self.entries]

    def empty(self, batch: int) -> dict[str, np.ndarray]:
        """Feeds of an empty past (prefill) for `batch` sequences."""
        return {e.past: np.zeros((batch, e.a, 0, e.b), dtype=e.dtype) for e in self.entries}

    def feeds_from(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The next step's past feeds from this step's presents."""
        return {e.past: outputs[e.present] for e in self.entries}


_NUMPY = {ir.DataType.FLOAT: "float32", ir.DataType.UINT8: "uint8", ir.DataType.INT8: "int8"}
_ORT = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}


def _cache(inputs: list[tuple[str, str | None, list]], outputs: set[str]) -> KvCache | None:
    """The KvCache of (name, numpy dtype, shape) inputs and output names, or None without a usable cache."""
    entries, layers = [], set()
    for name, dtype, shape in inputs:
        if not name.startswith(PAST_PREFIX):
            continue
        present = PRESENT_PREFIX + name[len(PAST_PREFIX) :]
        if dtype is None or present not in outputs or shape is None or len(shape) != 4:
            return None
        if not isinstance(shape[1], int) or not isinstance(shape[3], int):
            return None
        entries.append(CacheEntry(name, present, dtype, int(shape[1]), int(shape[3])))
        if name.endswith(".key"):
            layers.add(name)
    keys = {e.past: e for e in entries}
    first = keys.get(past_name(0, "key"))
    if not entries or first is None:
        return None
    return KvCache(len(layers), first.a, first.b, tuple(entries))


def kv_cache_of(model: ir.Model) -> KvCache | None:
    """The KV cache of `model` when its inputs are ``past_key_values.*`` with static heads and head size and
    matching ``present.*`` outputs, else None (a decoder exported without a cache)."""
    inputs = [(v.name, _NUMPY.get(v.dtype), list(v.shape) if v.shape is not None else None) for v in model.graph.inputs]
    return _cache(inputs, {v.name for v in model.graph.outputs})


def kv_cache_of_session(session) -> KvCache | None:
    """`kv_cache_of` for an ONNX Runtime session (the artifact as a runtime sees it)."""
    inputs = [(i.name, _ORT.get(i.type), list(i.shape)) for i in session.get_inputs()]
    return _cache(inputs, {o.name for o in session.get_outputs()})


def complete_prefill_feeds(session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`feeds` with every cache input of `session` replaced by an empty past of that session's own types (the
    artifact's cache may be stored quantized while the task's feeds are float)."""
    kv = kv_cache_of_session(session)
    if kv is None or INPUT_NAME not in feeds:
        return feeds
    return {**feeds, **kv.empty(len(feeds[INPUT_NAME]))}


def prefill_feeds(model: ir.Model, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Feeds of token ids [B, T] for `model`: with an empty past when it has a KV cache."""
    kv = kv_cache_of(model)
    return {INPUT_NAME: ids, **(kv.empty(len(ids)) if kv is not None else {})}


def _wrapper(module, cache: bool):
    import torch

    layers = module.config.num_hidden_layers

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=input_ids, use_cache=False).logits

    class WithCache(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, past_keys: list, past_values: list):
            from transformers import DynamicCache

            past = DynamicCache(config=self.inner.config)
            for layer in range(layers):
                past.update(past_keys[layer], past_values[layer], layer)
            out = self.inner(input_ids=input_ids, past_key_values=past, use_cache=True)
            present = out.past_key_values.layers
            return out.logits, [present[i].keys for i in range(layers)], [present[i].values for i in range(layers)]

    return (WithCache if cache else LogitsOnly)(module).eval()


def export_causal_lm(module: object, path: Path, vocab_size: int, example_length: int = 16, cache: bool = True) -> Path:
    """Export a Hugging Face causal LM to ONNX (module docstring); `cache=False` gives the decoder without
    a KV cache (``input_ids`` → ``logits`` only)."""
    import torch

    from qcompile.frontends.torch import _quiet_exporter

    config = module.config
    if cache:
        config._attn_implementation = "eager"
    layers = config.num_hidden_layers
    kv_heads = config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    example = torch.randint(0, vocab_size, (2, example_length), generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=1024)
    sequence = torch.export.Dim("sequence", min=1 if cache else 2, max=4096)
    if cache:
        past = torch.export.Dim("past", min=0, max=4096)
        pasts = [torch.zeros(2, kv_heads, 3, head_dim) for _ in range(layers)]
        arguments = (example, pasts, [p.clone() for p in pasts])
        dynamic_shapes = {
            "input_ids": {0: batch, 1: sequence},
            "past_keys": [{0: batch, 2: past}] * layers,
            "past_values": [{0: batch, 2: past}] * layers,
        }
        # flattened as the wrapper's arguments and results are: every layer's key, then every layer's value
        inputs = [INPUT_NAME] + [past_name(i, kind) for kind in ("key", "value") for i in range(layers)]
        outputs = [OUTPUT_NAME] + [present_name(i, kind) for kind in ("key", "value") for i in range(layers)]
    else:
        arguments = (example,)
        dynamic_shapes = {"input_ids": {0: batch, 1: sequence}}
        inputs, outputs = [INPUT_NAME], [OUTPUT_NAME]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = path.parent / f".{path.stem}.partial"
    stage.mkdir(exist_ok=True)
    staged = stage / path.name
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(
            _wrapper(module, cache),
            arguments,
            dynamo=True,
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=dynamic_shapes,
            opset_version=18,
            verbose=False,
        )
    program.save(str(staged), external_data=True)
    data_name = path.name + ".data"
    if (stage / data_name).exists():
        (stage / data_name).replace(path.parent / data_name)
    staged.replace(path)  # the .onnx last: its presence means the export is complete
    for leftover in stage.iterdir():
        leftover.unlink()
    stage.rmdir()
    return path
