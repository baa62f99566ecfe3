"""A quantized Llama-family decoder as the TVM backend compiles it: plain arrays and numbers, read off a QDQ
decoder artifact by `reader.read_decoder` (which says what it does not support), independent of ONNX.

Per block (pre-norm, residual adds; the norms weightless where `rotate` folded γ into the next linears):

    h   = x + o( attention( rope(q), rope(k), v ) )        q, k, v = qkv( rms(x) ⊙ γ₁ )
    out = h + down( silu(gate) ⊙ up )                       gate, up = gate_up( rms(h) ⊙ γ₂ )

Every `Linear` is y = (t(x) quantized per token) · W with W = (codes − zero)·scale per group of `group` input
rows (t: a chain of online transforms applied in order, each a Kronecker product x·(A ⊗ B) — `rotate`'s
Hadamards, FlatQuant's affine factors — or a per-channel scaling, FlatQuant's). q, k, v read one quantized
input, as do gate and up, so each pair or triple is one Linear with its columns side by side (`splits`).
After RoPE, q and k may get a per-head transform (`rotate`'s key Hadamard); the new keys and values may be
quantized per head and token before they enter the cache (a `TokenQuant`); an intact-kv prefix's float keys and
values come first in every sequence's cache. Attention is causal over [past, new], grouped-query (`heads` /
`kv_heads` query heads share a KV head), with scores scaled by `score_scale` before the softmax. The LM head
reads the final norm's output.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["TokenQuant", "Kronecker", "ChannelScale", "Linear", "Block", "Decoder"]


@dataclasses.dataclass(frozen=True)
class TokenQuant:
    """Dynamic per-token quantization (`QuantSpec.per_token`): of a linear layer's input (per row), or of the new
    keys or values entering the cache (per head and token)."""

    bits: int
    symmetric: bool
    clip_ratio: float = 1.0


@dataclasses.dataclass
class Kronecker:
    """An online transform y = x · (A ⊗ B) over the last axis (`qcompile.ir.online_ops`)."""

    a: np.ndarray
    b: np.ndarray
    kind: str = "KroneckerRotate"


@dataclasses.dataclass
class ChannelScale:
    """y = x ⊙ c over the last axis (FlatQuant's per-channel scaling before its affine transform)."""

    c: np.ndarray


@dataclasses.dataclass
class Linear:
    """y = quantize(t(x)) · W, W[k, n] = (codes[k, n] − zero[k // group, n]) · scale[k // group, n]; codes
    None for a float weight (`weight` then holds it). `transforms`: t, applied first to last. `splits`: the
    column widths of the fused outputs."""

    codes: np.ndarray | None
    zero: np.ndarray | None
    scale: np.ndarray | None
    group: int
    bits: int
    act: TokenQuant | None
    transforms: tuple[Kronecker | ChannelScale, ...] = ()
    weight: np.ndarray | None = None
    splits: tuple[int, ...] = ()

    @property
    def in_features(self) -> int:
        return int((self.codes if self.codes is not None else self.weight).shape[0])

    @property
    def out_features(self) -> int:
        return int((self.codes if self.codes is not None else self.weight).shape[1])

    def dequantized(self) -> np.ndarray:
        """W as float32, as the artifact's DequantizeLinear computes it."""
        if self.codes is None:
            return self.weight.astype(np.float32)
        rows = np.arange(self.in_features) // self.group
        centred = (self.codes.astype(np.int32) - self.zero[rows].astype(np.int32)).astype(np.float32)
        return centred * self.scale[rows].astype(np.float32)


@dataclasses.dataclass
class Block:
    attn_norm: np.ndarray | None  # γ₁ (None: weightless)
    qkv: Linear
    q_transform: Kronecker | None  # after RoPE, per head
    k_transform: Kronecker | None
    key_quant: TokenQuant | None
    value_quant: TokenQuant | None
    o: Linear
    mlp_norm: np.ndarray | None
    gate_up: Linear
    down: Linear
    prefix_key: np.ndarray | None = None  # intact-kv: the prefix's keys and values [kv_heads, P, head_dim], float
    prefix_value: np.ndarray | None = None


@dataclasses.dataclass
class Decoder:
    embedding: np.ndarray  # [vocab, hidden]
    blocks: list[Block]
    final_norm: np.ndarray | None
    lm_head: Linear
    heads: int
    kv_heads: int
    head_dim: int
    rms_eps: float
    rope_inv_freq: np.ndarray  # [head_dim / 2]
    score_scale: float

    @property
    def hidden(self) -> int:
        return int(self.embedding.shape[1])

    @property
    def vocab(self) -> int:
        return int(self.embedding.shape[0])
