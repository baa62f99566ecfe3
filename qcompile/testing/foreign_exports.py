"""BERT encoders exported the way other tools export them, from the zoo's all-MiniLM-L6-v2 weights.

qcompile's own MiniLM (`qcompile.zoo.minilm_module`) is written for a clean export. Users bring models
exported by other tools, whose graphs differ in ways that must not matter to the passes. `HFStyleBert`
re-implements Hugging Face's `BertModel` forward in plain torch, with the details that shape those graphs:

* embeddings read `position_ids` and `token_type_ids` from int64 buffers (Slice of a buffer, Gather);
* heads are split with `x.size()[:-1] + (heads, head_dim)` and `view` (Shape/Gather/Concat/Reshape);
* scores are divided by √d (`Div`), and the attention mask is built either as transformers' legacy
  extended mask (1 − m)·finfo.min (``mask="legacy"``), or as its newer mask functions do, from index
  comparisons on the padding mask: gather(m, kv_idx) == 1 & kv_idx >= 0, then `torch.where(allowed, 0,
  finfo.min)` (``mask="where"``: GatherElements, Equal, GreaterOrEqual, And, Where in the export);
* ``outputs="sentence_transformers"`` returns what an optimum / sentence-transformers export does:
  ``last_hidden_state``, the masked mean pooling ``sentence_embedding``, and the int64 ``input_ids``
  re-emitted as an output (an Identity in the graph).

`export` writes one of four variants (`EXPORTS`) as an `ir.Model`: TorchScript (``dynamo=False``) at
opset 13 with the `where` mask, TorchScript at opset 17 with the legacy mask, the dynamo exporter
(``dynamo=True``), and the sentence-transformers-style export (TorchScript, opset 14). `calibration`
gives padded sentences tokenized with the model's own tokenizer.
"""

from __future__ import annotations

import dataclasses
import io
import math
import warnings

import numpy as np
import onnx
import onnx_ir as ir
import torch
import torch.nn.functional as F
from torch import nn

from qcompile.pipeline.context import CalibrationData
from qcompile.zoo.minilm_module import MiniLMEncoder, encode_batch, load_minilm

__all__ = [
    "EXPORTS",
    "ForeignExport",
    "HFStyleBert",
    "SENTENCES",
    "calibration",
    "cut_layers",
    "evaluation_feeds",
    "export",
]

SENTENCES = [
    "a gripping , funny and moving film .",
    "dull .",
    "the plot goes nowhere and the actors seem to know it .",
    "an intelligent , warm comedy .",
    "it is neither as clever nor as funny as it thinks it is , and it drags .",
    "worth seeing twice .",
    "a mess from start to finish .",
    "the best film of the year , by a wide margin .",
    "flat characters , flat jokes .",
    "beautifully shot and surprisingly tender .",
    "too long .",
    "i laughed , i cried , i went home happy .",
]


class HFStyleBert(nn.Module):
    """Hugging Face `BertModel`'s forward over `MiniLMEncoder`'s parameters (the same numbers).

    Args:
        encoder: the loaded MiniLM module (its layers may be cut with `cut_layers`).
        mask: "legacy" (1 − m)·finfo.min, or "where" (index comparisons and `torch.where`).
        outputs: "pooled" (the mean-pooled embedding only) or "sentence_transformers" (last_hidden_state,
            sentence_embedding and input_ids).
    """

    def __init__(self, encoder: MiniLMEncoder, mask: str = "legacy", outputs: str = "pooled") -> None:
        super().__init__()
        if mask not in ("legacy", "where") or outputs not in ("pooled", "sentence_transformers"):
            raise ValueError(f"unknown variant mask={mask!r} outputs={outputs!r}")
        self.encoder, self.mask, self.outputs = encoder, mask, outputs
        positions = encoder.config.max_position_embeddings
        self.register_buffer("position_ids", torch.arange(positions).expand((1, -1)), persistent=False)
        self.register_buffer("token_type_ids", torch.zeros((1, positions), dtype=torch.long), persistent=False)

    def _extended_mask(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        minimum = torch.finfo(dtype).min
        if self.mask == "legacy":
            extended = attention_mask[:, None, None, :].to(dtype)
            return (1.0 - extended) * minimum
        batch, length = attention_mask.shape
        kv_idx = torch.arange(length, device=attention_mask.device)[None, :].expand(batch, length)
        allowed = (torch.gather(attention_mask, 1, kv_idx) == 1) & (kv_idx >= 0)
        zero = torch.tensor(0.0, dtype=dtype)
        return torch.where(allowed[:, None, None, :], zero, torch.tensor(minimum, dtype=dtype))

    def _split(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        shape = x.size()[:-1] + (heads, x.size(-1) // heads)
        return x.view(shape).permute(0, 2, 1, 3)

    def _layer(self, layer, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = self._split(layer.query(hidden), layer.heads)
        k = self._split(layer.key(hidden), layer.heads)
        v = self._split(layer.value(hidden), layer.heads)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(layer.head_dim) + mask
        probs = nn.functional.softmax(scores, dim=-1)
        context = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        context = context.view(context.size()[:-2] + (layer.heads * layer.head_dim,))
        hidden = layer.attn_norm(layer.attn_out(context) + hidden)
        return layer.ffn_norm(layer.ffn_out(F.gelu(layer.ffn_in(hidden))) + hidden)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """BertModel's embeddings and encoder, then pooling as `outputs` says."""
        embeddings = self.encoder.embeddings
        length = input_ids.size(1)
        position_ids = self.position_ids[:, :length]
        token_type_ids = self.token_type_ids[:, :length].expand(input_ids.size(0), length)
        hidden = embeddings.word(input_ids) + embeddings.token_type(token_type_ids) + embeddings.position(position_ids)
        hidden = embeddings.norm(hidden)
        mask = self._extended_mask(attention_mask, hidden.dtype)
        for layer in self.encoder.layers:
            hidden = self._layer(layer, hidden, mask)
        expanded = attention_mask.unsqueeze(-1).expand(hidden.size()).float()
        pooled = torch.sum(hidden * expanded, 1) / torch.clamp(expanded.sum(1), min=1e-9)
        if self.outputs == "pooled":
            return pooled
        return hidden, pooled, input_ids


@dataclasses.dataclass(frozen=True)
class ForeignExport:
    """How one variant is exported."""

    mask: str
    outputs: str
    dynamo: bool
    opset: int

    @property
    def output_names(self) -> list[str]:
        if self.outputs == "pooled":
            return ["sentence_embedding"]
        return ["last_hidden_state", "sentence_embedding", "input_ids_out"]


EXPORTS = {
    "torchscript-opset13-where-mask": ForeignExport("where", "pooled", dynamo=False, opset=13),
    "torchscript-opset17-legacy-mask": ForeignExport("legacy", "pooled", dynamo=False, opset=17),
    "dynamo": ForeignExport("legacy", "pooled", dynamo=True, opset=18),
    "sentence-transformers": ForeignExport("legacy", "sentence_transformers", dynamo=False, opset=14),
}


def cut_layers(encoder: MiniLMEncoder, layers: int) -> MiniLMEncoder:
    """`encoder` keeping only its first `layers` layers (in place)."""
    encoder.layers = encoder.layers[:layers]
    encoder.config = dataclasses.replace(encoder.config, num_hidden_layers=layers)
    return encoder


def _example(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    feeds = encode_batch(tokenizer, SENTENCES[:2])
    return torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])


def export(name: str, layers: int = 2) -> ir.Model:
    """The variant `name` of `EXPORTS`, with the first `layers` layers of all-MiniLM-L6-v2."""
    spec = EXPORTS[name]
    encoder, tokenizer = load_minilm()
    module = HFStyleBert(cut_layers(encoder, layers), mask=spec.mask, outputs=spec.outputs).eval()
    args = _example(tokenizer)
    input_names = ["input_ids", "attention_mask"]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec.dynamo:
            batch, sequence = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("sequence", min=2, max=128)
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                input_names=input_names,
                output_names=spec.output_names,
                dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
                opset_version=spec.opset,
                verbose=False,
            )
            return ir.from_proto(onnx.shape_inference.infer_shapes(ir.to_proto(program.model)))
        buffer = io.BytesIO()
        dynamic = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
        dynamic.update({out: {0: "batch", 1: "sequence"} for out in spec.output_names})
        dynamic["sentence_embedding"] = {0: "batch"}
        torch.onnx.export(
            module,
            args,
            buffer,
            dynamo=False,
            input_names=input_names,
            output_names=spec.output_names,
            dynamic_axes=dynamic,
            opset_version=spec.opset,
        )
    return ir.from_proto(onnx.shape_inference.infer_shapes(onnx.load_from_string(buffer.getvalue())))


def calibration(batches: int = 3, batch_size: int = 4) -> CalibrationData:
    """`batches` padded batches of `SENTENCES` (wrapping around), tokenized for MiniLM."""
    _, tokenizer = load_minilm()
    feeds = []
    for index in range(batches):
        picked = [SENTENCES[(index * batch_size + k) % len(SENTENCES)] for k in range(batch_size)]
        feeds.append(encode_batch(tokenizer, picked))
    return CalibrationData.from_list(feeds)


def evaluation_feeds() -> dict[str, np.ndarray]:
    """Sentences of different lengths (padding in every row but one), not in the calibration batches'
    order."""
    _, tokenizer = load_minilm()
    return encode_batch(tokenizer, [SENTENCES[i] for i in (4, 1, 9, 6)])
