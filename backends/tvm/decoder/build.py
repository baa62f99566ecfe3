"""A `spec.Decoder` → a TVM library whose `decode` function takes one token and the cache and returns its logits,
the cache written in place (a fixed `capacity` of positions), and `DecodeSession`, which runs it token by token.

    decode(token i32 [1], pos i32 [1], *cache) → logits f32 [1, vocab]

The cache is one tensor per layer and kind (float [kv_heads, capacity, head_dim]) or three (codes, scales, zero
points) where the spec quantizes it; `DecodeSession` owns it. Per block the step runs the spec's ops in order
(`spec` docstring) with one kernel each: `rms_norm`, the transform chain, `token_quantize`, `int4_matmul` (fused
q/k/v and gate/up), `rope`, the per-head transforms, `cache_write` (in place: `call_tir_inplace`), `attention`,
`silu_mul`; the LM head is the float `gemv`, float32 or (opt-in) float16, or the 4-bit matmul where the spec
quantized it. Weights are
constants of the library, packed at build time.

Supported: 4-bit weights with per-token integer activations (every linear of the blocks). Float activations
(w4a16) and 8-bit weights need kernels that do not exist yet, and an intact-kv prefix in front of a quantized
cache needs a float cache that holds quantized values; these raise `UnsupportedDecoder`. A prompt is fed one
token at a time (no prefill function yet).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from qcompile.backends.tvm.decoder import kernels
from qcompile.backends.tvm.decoder.reader import UnsupportedDecoder
from qcompile.backends.tvm.decoder.spec import ChannelScale, Decoder, Kronecker, Linear
from qcompile.backends.tvm.kernels.int4_matmul import FLAVOURS, int4_matmul_func, pack_group_params, pack_weight
from qcompile.backends.tvm.kernels.token_quantize import token_quantize_func

__all__ = ["build_decode", "DecodeSession", "cache_layout"]

SCHEDULED = "tirx.is_scheduled"  # dlight leaves these PrimFuncs alone
OPAQUE = 8  # relax.OpPatternKind.kOpaque: FuseOps does not merge them with neighbours


def _check(decoder: Decoder) -> None:
    for index, block in enumerate(decoder.blocks):
        for name in ("qkv", "o", "gate_up", "down"):
            layer: Linear = getattr(block, name)
            if layer.codes is None or layer.bits != 4 or layer.act is None:
                raise UnsupportedDecoder(
                    f"block {index} {name}: the TVM decoder compiles 4-bit weights with per-token integer "
                    f"activations (this layer has {layer.bits}-bit weights, activations "
                    f"{'float' if layer.act is None else f'{layer.act.bits}-bit'})"
                )
        if block.prefix_key is not None and block.key_quant is not None:
            raise UnsupportedDecoder("an intact-kv prefix before a quantized KV cache is not compiled for TVM yet")


def cache_layout(decoder: Decoder, capacity: int) -> list[tuple[tuple[int, ...], str]]:
    """(shape, dtype) of every cache tensor, in `decode`'s argument order: per layer the keys, then the values."""
    kvh, dim = decoder.kv_heads, decoder.head_dim
    layout = []
    for block in decoder.blocks:
        for quant in (block.key_quant, block.value_quant):
            if quant is None:
                layout.append(((kvh, capacity, dim), "float32"))
            else:
                layout += [((kvh, capacity, dim), "int8"), ((kvh, capacity), "float32"), ((kvh, capacity), "float32")]
    return layout


def _with_root_block(func):
    """`func` with its body inside a root SBlock: Relax's dataflow passes expect one in every PrimFunc they call,
    and kernels written as plain loops (TVMScript without blocks) have none."""
    from tvm import s_tir

    if isinstance(func.body, s_tir.SBlockRealize):
        return func
    root = s_tir.SBlock([], [], [], "root", func.body)
    return func.with_body(s_tir.SBlockRealize([], True, root))


class _Builder:
    """Emits the decode step into a Relax BlockBuilder, adding each distinct kernel once."""

    def __init__(self, flavour: str):
        from tvm import relax

        self.relax = relax
        self.bb = relax.BlockBuilder()
        self.flavour = flavour
        self.funcs: dict[tuple, object] = {}

    def kernel(self, key: tuple, make):
        if key not in self.funcs:
            name = "_".join(str(part).replace(".", "p").replace("-", "m") for part in key)
            func = (
                _with_root_block(make())
                .without_attr("global_symbol")
                .with_attr({SCHEDULED: True, "op_pattern": OPAQUE})
            )
            self.funcs[key] = self.bb.add_func(func, name)
        return self.funcs[key]

    def call(self, key, make, args, shape, dtype="float32"):
        relax = self.relax
        out = relax.TensorType(shape, dtype) if isinstance(shape, tuple) else [relax.TensorType(s, d) for s, d in shape]
        return self.bb.emit(relax.call_tir(self.kernel(key, make), args, out))

    def const(self, array: np.ndarray):
        return self.relax.const(np.ascontiguousarray(array))

    def slice(self, x, begin: int, end: int):
        return self.bb.emit(self.relax.op.strided_slice(x, axes=[1], begin=[begin], end=[end]))

    def reshape(self, x, shape):
        return self.bb.emit(self.relax.op.reshape(x, shape))

    def add(self, a, b):
        return self.bb.emit(self.relax.op.add(a, b))

    def transform(self, x, width: int, step: Kronecker | ChannelScale, rows: int = 1):
        if isinstance(step, ChannelScale):
            return self.call(
                ("scale", width), lambda: kernels.channel_scale_func(width), [x, self.const(step.c)], (1, width)
            )
        a, b = step.a.shape[0], step.b.shape[0]
        args = [x, self.const(step.a), self.const(step.b)]
        return self.call(("kron", rows, a, b), lambda: kernels.kronecker_func(rows, a, b), args, (rows, width))

    def linear(self, x, layer: Linear):
        """y [1, out_features] of a 4-bit linear layer on x [1, in_features]."""
        k, n = layer.in_features, layer.out_features
        for step in layer.transforms:
            x = self.transform(x, k, step)
        act = layer.act
        asym = not act.symmetric
        quant_out = [((1, k), "int8"), ((1,), "float32")] + ([((1,), "int32")] if asym else [])
        quantized = self.call(
            ("tq", k, act.bits, act.symmetric, act.clip_ratio),
            lambda: token_quantize_func(1, k, act.bits, act.symmetric, act.clip_ratio),
            [x],
            quant_out,
        )
        lanes = FLAVOURS[self.flavour]
        scale, zero, sums = pack_group_params(layer.codes, layer.zero, layer.scale, lanes, layer.group)
        weights = [self.const(pack_weight(layer.codes, lanes)), self.const(scale), self.const(zero)]
        tq = [self.bb.emit(self.relax.TupleGetItem(quantized, i)) for i in range(len(quant_out))]
        args = [tq[0], *weights] + ([self.const(sums), tq[1], tq[2]] if asym else [tq[1]])
        padded = scale.shape[1]
        y = self.call(
            ("mm", k, n, layer.group, asym, self.flavour),
            lambda: int4_matmul_func(1, k, n, layer.group, self.flavour, act_zero=asym),
            args,
            (1, padded),
        )
        return y if padded == n else self.slice(y, 0, n)


def build_decode(decoder: Decoder, capacity: int, flavour: str, target, head_dtype: str = "float32"):
    """The compiled decode step (a Relax VM executable) of `decoder` for a cache of `capacity` positions.
    `head_dtype` "float16" stores a float LM head in half precision (half the bytes every step reads; the logits
    then differ from the artifact's by the weights' rounding: an opt-in, measured in the runtime table)."""
    from tvm import relax

    from qcompile.backends.tvm.build import compile_relax

    _check(decoder)
    b = _Builder(flavour)
    d = decoder.hidden
    token = relax.Var("token", relax.TensorType((1,), "int32"))
    pos = relax.Var("pos", relax.TensorType((1,), "int32"))
    cache = [relax.Var(f"cache{i}", relax.TensorType(s, t)) for i, (s, t) in enumerate(cache_layout(decoder, capacity))]
    with b.bb.function("decode", [token, pos, *cache]):
        with b.bb.dataflow():
            x = b.bb.emit(relax.op.take(b.const(decoder.embedding), token, axis=0))
            slot = 0
            for block in decoder.blocks:
                x, slot = _block(b, decoder, block, x, pos, cache, slot, capacity)
            normed = _norm(b, x, d, decoder.rms_eps, decoder.final_norm)
            logits = _lm_head(b, normed, decoder, head_dtype)
            out = b.bb.emit_output(logits)
        b.bb.emit_func_output(out)
    return compile_relax(b.bb.get(), target)


def _norm(b: _Builder, x, d: int, eps: float, gamma):
    key = ("rms", d, float(eps), gamma is not None)
    args = [x] if gamma is None else [x, b.const(gamma)]
    return b.call(key, lambda: kernels.rms_norm_func(d, eps, gamma is not None), args, (1, d))


def _lm_head(b: _Builder, x, decoder: Decoder, dtype: str):
    head = decoder.lm_head
    if head.codes is not None:
        return b.linear(x, head)
    if dtype not in ("float32", "float16"):
        raise ValueError(f"the LM head is stored as float32 or float16, not {dtype}")
    k, n = head.weight.shape
    packed = kernels.pack_gemv_weight(head.weight, dtype)
    y = b.call(
        ("gemv", k, n, dtype),
        lambda: kernels.gemv_func(k, n, dtype=dtype),
        [x, b.const(packed)],
        (1, packed.shape[0] * kernels.GEMV_LANES),
    )
    return y if packed.shape[0] * kernels.GEMV_LANES == n else b.slice(y, 0, n)


def _cache_write(b: _Builder, new, pos, cache, slot, quant, kvh, dim, capacity):
    """Write `new` [kvh, dim] into the cache tensors at `slot`, in place; returns (the tensors the attention
    reads, the next slot)."""
    from tvm import relax

    if quant is None:
        key = ("kvw", kvh, dim, capacity)
        gv = b.kernel(key, lambda: kernels.cache_write_func(kvh, dim, capacity, None, True, 1.0))
        out = b.bb.emit(relax.call_tir_inplace(gv, [new, pos, cache[slot]], [2], cache[slot].ty))
        return [out], slot + 1
    key = ("kvq", kvh, dim, capacity, quant.bits, quant.symmetric, quant.clip_ratio)
    gv = b.kernel(
        key, lambda: kernels.cache_write_func(kvh, dim, capacity, quant.bits, quant.symmetric, quant.clip_ratio)
    )
    tensors = cache[slot : slot + 3]
    out = b.bb.emit(relax.call_tir_inplace(gv, [new, pos, *tensors], [2, 3, 4], [t.ty for t in tensors]))
    return [b.bb.emit(relax.TupleGetItem(out, i)) for i in range(3)], slot + 3


def _block(b: _Builder, decoder: Decoder, block, x, pos, cache, slot: int, capacity: int):
    d, heads, kvh, dim = decoder.hidden, decoder.heads, decoder.kv_heads, decoder.head_dim
    qkv = b.linear(_norm(b, x, d, decoder.rms_eps, block.attn_norm), block.qkv)
    dq, dkv = heads * dim, kvh * dim
    q = b.reshape(b.slice(qkv, 0, dq), (heads, dim))
    k = b.reshape(b.slice(qkv, dq, dq + dkv), (kvh, dim))
    v = b.reshape(b.slice(qkv, dq + dkv, dq + 2 * dkv), (kvh, dim))
    inv = decoder.rope_inv_freq
    q = b.call(("rope", heads, dim), lambda: kernels.rope_func(heads, dim, inv), [q, pos], (heads, dim))
    k = b.call(("rope", kvh, dim), lambda: kernels.rope_func(kvh, dim, inv), [k, pos], (kvh, dim))
    if block.q_transform is not None:
        q = b.transform(q, dim, block.q_transform, rows=heads)
    if block.k_transform is not None:
        k = b.transform(k, dim, block.k_transform, rows=kvh)
    keys, slot = _cache_write(b, k, pos, cache, slot, block.key_quant, kvh, dim, capacity)
    values, slot = _cache_write(b, v, pos, cache, slot, block.value_quant, kvh, dim, capacity)
    quantized = block.key_quant is not None
    if quantized != (block.value_quant is not None):
        raise UnsupportedDecoder("keys and values must both be quantized, or both float")
    shift = 0 if not quantized or block.key_quant.symmetric else 128
    attended = b.call(
        ("attn", heads, kvh, dim, capacity, decoder.score_scale, quantized, shift),
        lambda: kernels.attention_func(heads, kvh, dim, capacity, decoder.score_scale, quantized, shift),
        [q, pos, *keys, *values],
        (1, heads * dim),
    )
    x = b.add(x, b.linear(attended, block.o))
    gate_up = b.linear(_norm(b, x, d, decoder.rms_eps, block.mlp_norm), block.gate_up)
    ffn = block.gate_up.out_features // 2
    hidden = b.call(("silu", ffn), lambda: kernels.silu_mul_func(ffn), [gate_up], (1, ffn))
    return b.add(x, b.linear(hidden, block.down)), slot


@dataclasses.dataclass
class DecodeSession:
    """Runs a built decode step token by token, owning the cache (`capacity` positions)."""

    decoder: Decoder
    executable: object
    capacity: int

    def __post_init__(self):
        import tvm
        from tvm import relax

        self.vm = relax.VirtualMachine(self.executable, tvm.cpu())
        self.reset()

    def reset(self) -> None:
        """An empty cache (or the intact-kv prefix's, whose positions every sequence follows)."""
        import tvm

        arrays = [np.zeros(shape, dtype) for shape, dtype in cache_layout(self.decoder, self.capacity)]
        self.position = 0
        slot = 0
        for block in self.decoder.blocks:
            for prefix, quant in ((block.prefix_key, block.key_quant), (block.prefix_value, block.value_quant)):
                if prefix is not None:
                    arrays[slot][:, : prefix.shape[1]] = prefix
                    self.position = prefix.shape[1]
                slot += 1 if quant is None else 3
        self.cache = [tvm.runtime.tensor(a) for a in arrays]

    def step(self, token: int) -> np.ndarray:
        """The logits [vocab] after feeding `token` at the next position."""
        import tvm

        if self.position >= self.capacity:
            raise ValueError(f"the cache holds {self.capacity} positions; reset() or build with a larger capacity")
        args = [
            tvm.runtime.tensor(np.array([token], np.int32)),
            tvm.runtime.tensor(np.array([self.position], np.int32)),
        ]
        logits = self.vm["decode"](*args, *self.cache)
        self.position += 1
        return logits.numpy()[0]
