"""A `spec.Decoder` run in NumPy float32, op for op as the QDQ artifact computes it (the per-token quantizers
through `QuantSpec`, weights dequantized, then float matmuls): the reference the TVM decoder is checked
against, itself checked against ONNX Runtime's run of the artifact (tests/backends/test_tvm_decoder_reader.py).

`Cache` holds, per layer, the keys and values the attention reads (dequantized when the spec stores codes)
for the positions seen so far; `step` appends a chunk of tokens (a prefill, or one decoded token) and returns
the logits of every new position.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from qcompile.backends.tvm.decoder.spec import ChannelScale, Decoder, Kronecker, Linear, TokenQuant
from qcompile.ir.online_ops import kronecker_rotate
from qcompile.ir.quant_meta import QuantSpec

__all__ = ["Cache", "step", "rms_norm", "linear", "rope"]


@dataclasses.dataclass
class Cache:
    keys: list[np.ndarray]  # per layer [kv_heads, positions, head_dim], as the attention reads them
    values: list[np.ndarray]

    @classmethod
    def empty(cls, decoder: Decoder) -> Cache:
        """The cache before a sequence: empty, or the intact-kv prefix (whose positions the sequence follows)."""
        shape = (decoder.kv_heads, 0, decoder.head_dim)

        def start(prefix: np.ndarray | None) -> np.ndarray:
            return np.zeros(shape, np.float32) if prefix is None else prefix.astype(np.float32)

        return cls([start(b.prefix_key) for b in decoder.blocks], [start(b.prefix_value) for b in decoder.blocks])

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[1])


def rms_norm(x: np.ndarray, gamma: np.ndarray | None, eps: float) -> np.ndarray:
    """x · 1/√(mean(x²) + ε) (⊙ γ), in the exporter's op order."""
    inverse = np.float32(1) / np.sqrt(np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32) + np.float32(eps))
    normed = x * inverse
    return normed if gamma is None else gamma * normed


def _transform(x: np.ndarray, transform: Kronecker | ChannelScale | None) -> np.ndarray:
    if transform is None:
        return x
    if isinstance(transform, ChannelScale):
        return x * transform.c
    return kronecker_rotate(x, transform.a, transform.b).astype(np.float32)


def linear(x: np.ndarray, layer: Linear) -> np.ndarray:
    for transform in layer.transforms:
        x = _transform(x, transform)
    if layer.act is not None:
        x = QuantSpec.per_token(layer.act.bits, layer.act.symmetric, layer.act.clip_ratio).fake_quantize(x)
    return (x @ layer.dequantized()).astype(np.float32)


def _kv(x: np.ndarray, quant: TokenQuant | None) -> np.ndarray:
    if quant is None:
        return x
    return QuantSpec.per_token(quant.bits, quant.symmetric, quant.clip_ratio).fake_quantize(x)


def rope(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """Llama's rotary embedding of x [heads, T, D] (rotate_half: the two halves of D)."""
    freqs = positions.astype(np.float32)[:, None] * inv_freq[None, :]
    angles = np.concatenate([freqs, freqs], axis=-1)
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * np.cos(angles) + rotated * np.sin(angles)


def step(decoder: Decoder, ids: np.ndarray, cache: Cache) -> tuple[np.ndarray, Cache]:
    """Logits [T, vocab] of the T new tokens `ids` after the cached positions, and the extended cache."""
    t, past = len(ids), cache.length
    positions = np.arange(past, past + t)
    x = decoder.embedding[ids]
    heads, kv_heads, dim = decoder.heads, decoder.kv_heads, decoder.head_dim
    keys, values = [], []
    mask = np.where(np.arange(past + t)[None, :] <= positions[:, None], 0.0, np.finfo(np.float32).min)
    for index, block in enumerate(decoder.blocks):
        q, k, v = np.split(
            linear(rms_norm(x, block.attn_norm, decoder.rms_eps), block.qkv), np.cumsum(block.qkv.splits)[:-1], axis=-1
        )
        q = rope(q.reshape(t, heads, dim).transpose(1, 0, 2), positions, decoder.rope_inv_freq)
        k = rope(k.reshape(t, kv_heads, dim).transpose(1, 0, 2), positions, decoder.rope_inv_freq)
        v = v.reshape(t, kv_heads, dim).transpose(1, 0, 2)
        q, k = _transform(q, block.q_transform), _transform(k, block.k_transform)
        all_k = np.concatenate([cache.keys[index], _kv(k, block.key_quant)], axis=1)
        all_v = np.concatenate([cache.values[index], _kv(v, block.value_quant)], axis=1)
        keys.append(all_k)
        values.append(all_v)
        group = heads // kv_heads
        scores = (q @ np.repeat(all_k, group, axis=0).transpose(0, 2, 1)) * np.float32(decoder.score_scale) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = (scores / scores.sum(axis=-1, keepdims=True)).astype(np.float32)
        attended = (probs @ np.repeat(all_v, group, axis=0)).transpose(1, 0, 2).reshape(t, heads * dim)
        x = x + linear(attended, block.o)
        gate, up = np.split(linear(rms_norm(x, block.mlp_norm, decoder.rms_eps), block.gate_up), 2, axis=-1)
        x = x + linear(gate * (np.float32(1) / (np.float32(1) + np.exp(-gate))) * up, block.down)
    logits = linear(rms_norm(x, decoder.final_norm, decoder.rms_eps), decoder.lm_head)
    return logits, Cache(keys, values)


class ReferenceSession:
    """`reset()`, `prefill(ids)` and `step(token)` (the last position's logits) over `step`, as a library session
    runs them: the NumPy reference next to the library and ONNX Runtime."""

    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder
        self.reset()

    def reset(self) -> None:
        self.cache = Cache.empty(self.decoder)

    def prefill(self, ids) -> np.ndarray:
        logits, self.cache = step(self.decoder, np.asarray(ids), self.cache)
        return logits[-1]

    def step(self, token: int) -> np.ndarray:
        return self.prefill([token])
