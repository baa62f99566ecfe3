"""A `spec.Decoder` → a TVM library whose `decode` function takes one token and the cache and returns its logits,
and whose `prefill` function does the same for a chunk of tokens, the cache written in place (a fixed
`capacity` of positions); `session.DecodeSession` runs them over one sequence.

    decode(token i32 [1], pos i32 [1], *cache) → logits f32 [1, vocab]
    prefill(tokens i32 [chunk], pos i32 [1], *cache) → logits f32 [1, vocab] of the chunk's last token

The cache is one tensor per layer and kind (float [kv_heads, capacity, head_dim]) or three (codes, scales, zero
points) where the spec quantizes it; the session owns it (`cache_spec`). Per block the step runs the spec's ops in order
(`spec` docstring) with one kernel each: `rms_norm`, the transform chain, `token_quantize`, `int4_matmul` (fused
q/k/v and gate/up), `rope` (on angles `rope_table` computes once per step; with the q/k/v split in one kernel,
`qkv_rope`, or with the per-head transforms, `rope_kronecker`), the per-head transforms, `cache_write`
(in place: `call_tir_inplace`), `attention`, `silu_mul`; the LM head (on the last token only) is the float `gemv`,
float32 or (opt-in) float16 or int8 codes with a scale per vocabulary entry, or the integer matmul where the spec
quantized it. Weights are constants of the library,
packed at build time, one copy shared by both functions.

Supported: 4- and 8-bit weights with per-token integer activations (every linear of the blocks; 8-bit codes
through the same matmul kernel, one a byte), and 4-bit weights with float activations (w4a16: the same packed
codes, converted to float in registers, `int4_float_matmul`). 8-bit weights with float activations raise
`UnsupportedDecoder`. Behind an intact-kv
prefix a quantized cache is a float cache of quantized values, as in the artifact. A prompt goes through
`prefill` in whole chunks (rows of every kernel in parallel, causal attention within the chunk), the rest token
by token.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from types import SimpleNamespace

import numpy as np

from qcompile.backends.tvm.decoder import kernels
from qcompile.backends.tvm.decoder.fused import fused_quantize_func
from qcompile.backends.tvm.decoder.reader import UnsupportedDecoder
from qcompile.backends.tvm.decoder.session import CacheSpec
from qcompile.backends.tvm.decoder.spec import ChannelScale, Decoder, Kronecker, Linear
from qcompile.backends.tvm.kernels.int4_float_matmul import int4_float_matmul_func, pack_float_group_params
from qcompile.backends.tvm.kernels.int4_matmul import (
    FLAVOURS,
    PANEL,
    int4_matmul_func,
    pack_group_params,
    pack_weight,
    padded_columns,
)
from qcompile.backends.tvm.kernels.token_quantize import token_quantize_func

__all__ = ["build_decode", "cache_layout", "cache_spec", "stored_head", "kernel_set", "HEAD_DTYPES", "GPU_FLAVOUR"]

SCHEDULED = "tirx.is_scheduled"  # dlight leaves these PrimFuncs alone
OPAQUE = 8  # relax.OpPatternKind.kOpaque: FuseOps does not merge them with neighbours
HEAD_DTYPES = ("float32", "float16", "int8")  # how a float LM head can be stored
GPU_FLAVOUR = "cuda"  # the kernels' flavour on a CUDA target (`gpu_kernels`, `gpu_attention`, `gpu_matmul`)


def kernel_set(flavour: str, bind: bool = True) -> SimpleNamespace:
    """The step's kernel constructors for a flavour: x86 (`kernels`, `int4_matmul`, …) or CUDA's (`gpu_kernels`,
    `gpu_attention`, `gpu_matmul`), with the same signatures and arithmetic. bind=False: CUDA's kernels with their
    thread loops serial, to build and run on a CPU (tests)."""
    if flavour != GPU_FLAVOUR:
        return SimpleNamespace(
            rms_norm=kernels.rms_norm_func,
            token_quantize=token_quantize_func,
            silu_mul=kernels.silu_mul_func,
            channel_scale=kernels.channel_scale_func,
            kronecker=kernels.kronecker_func,
            rope_table=kernels.rope_table_func,
            rope=kernels.rope_func,
            rope_kronecker=kernels.rope_kronecker_func,
            cache_write=kernels.cache_write_func,
            attention=kernels.attention_func,
            gemv=kernels.gemv_func,
            pack_gemv_weight=kernels.pack_gemv_weight,
            int4_matmul=int4_matmul_func,
            int4_float_matmul=int4_float_matmul_func,
        )
    from qcompile.backends.tvm.decoder import gpu_attention, gpu_kernels
    from qcompile.backends.tvm.kernels import gpu_matmul

    def bound(make):
        return functools.partial(make, bind=bind)

    return SimpleNamespace(
        rms_norm=bound(gpu_kernels.rms_norm_func),
        token_quantize=bound(gpu_kernels.token_quantize_func),
        silu_mul=bound(gpu_kernels.silu_mul_func),
        channel_scale=bound(gpu_kernels.channel_scale_func),
        kronecker=bound(gpu_kernels.kronecker_func),
        rope_table=bound(gpu_kernels.rope_table_func),
        rope=bound(gpu_kernels.rope_func),
        rope_kronecker=bound(gpu_kernels.rope_kronecker_func),
        cache_write=bound(gpu_attention.cache_write_func),
        attention=bound(gpu_attention.attention_func),
        gemv=bound(gpu_matmul.gemv_func),
        pack_gemv_weight=gpu_matmul.pack_gemv_weight,
        int4_matmul=bound(gpu_matmul.int4_matmul_func),
        int4_float_matmul=bound(gpu_matmul.int4_float_matmul_func),
    )


def _check(decoder: Decoder) -> None:
    for index, block in enumerate(decoder.blocks):
        for name in ("qkv", "o", "gate_up", "down"):
            layer: Linear = getattr(block, name)
            if layer.codes is None or layer.bits not in (4, 8) or (layer.act is None and layer.bits != 4):
                raise UnsupportedDecoder(
                    f"block {index} {name}: the TVM decoder compiles 4- and 8-bit weights with per-token integer "
                    f"activations, or 4-bit weights with float ones (this layer has {layer.bits}-bit weights, "
                    f"activations {'float' if layer.act is None else f'{layer.act.bits}-bit'})"
                )


def unsigned_codes(layer: Linear) -> tuple[np.ndarray, np.ndarray]:
    """(codes, zero points) of a layer with codes in [0, 2^bits − 1], the kernels' unsigned operand: signed 8-bit
    codes w (int8 weights) become w + 128 with z + 128, the same w − z."""
    if layer.codes.min(initial=0) >= 0:
        return layer.codes, layer.zero
    return layer.codes + 2 ** (layer.bits - 1), layer.zero + 2 ** (layer.bits - 1)


def _as_codes(block) -> bool:
    """The block's cache holds codes (with scales and zero points): it is quantized and no intact-kv prefix's
    float values sit in front of it (the artifact then keeps a float cache of quantized values, and so do we)."""
    return block.key_quant is not None and block.prefix_key is None


def cache_layout(decoder: Decoder, capacity: int) -> list[tuple[tuple[int, ...], str]]:
    """(shape, dtype) of every cache tensor, in `decode`'s argument order: per layer the keys, then the values."""
    kvh, dim = decoder.kv_heads, decoder.head_dim
    layout = []
    for block in decoder.blocks:
        for _ in range(2):
            if not _as_codes(block):
                layout.append(((kvh, capacity, dim), "float32"))
            else:
                layout += [((kvh, capacity, dim), "int8"), ((kvh, capacity), "float32"), ((kvh, capacity), "float32")]
    return layout


def cache_spec(decoder: Decoder, capacity: int) -> CacheSpec:
    """The cache a `DecodeSession` of `decoder` owns: `cache_layout`, and the intact-kv prefix's keys and values
    (float, [kv_heads, P, head_dim]) by the index of the tensor they start."""
    prefix, slot = {}, 0
    for block in decoder.blocks:
        for values in (block.prefix_key, block.prefix_value):
            if values is not None:
                prefix[slot] = np.asarray(values, np.float32)
            slot += 3 if _as_codes(block) else 1
    return CacheSpec(cache_layout(decoder, capacity), prefix)


def stored_head(decoder: Decoder, head_dtype: str) -> Decoder:
    """`decoder` with its float LM head rounded as a library built with `head_dtype` stores it (float16, or the int8
    codes times their scales), for a reference of the library's logits; itself for float32 or a quantized head."""
    head = decoder.lm_head
    if head.codes is not None or head_dtype == "float32":
        return decoder
    if head_dtype == "float16":
        weight = head.weight.astype(np.float16).astype(np.float32)
    else:
        codes, scale = kernels.quantize_gemv_weight(head.weight)
        weight = codes * scale[: head.weight.shape[1]]
    return dataclasses.replace(decoder, lm_head=dataclasses.replace(head, weight=weight))


def _with_root_block(func):
    """`func` with its body inside a root SBlock: Relax's dataflow passes expect one in every PrimFunc they call,
    and kernels written as plain loops (TVMScript without blocks) have none."""
    from tvm import s_tir

    if isinstance(func.body, s_tir.SBlockRealize):
        return func
    root = s_tir.SBlock([], [], [], "root", func.body)
    return func.with_body(s_tir.SBlockRealize([], True, root))


class _Builder:
    """Emits step functions into a Relax BlockBuilder, adding each distinct kernel once and each weight constant
    once (one `relax.Constant` object shared by every function: the library holds the packed weights once)."""

    def __init__(self, flavour: str, bind: bool = True):
        from tvm import relax

        self.relax = relax
        self.bb = relax.BlockBuilder()
        self.flavour, self.gpu, self.k = flavour, flavour == GPU_FLAVOUR, kernel_set(flavour, bind)
        if self.gpu:
            from qcompile.backends.tvm.kernels.gpu_matmul import COLUMNS

            self.lanes, self.panel = COLUMNS, 1  # N padded to whole thread blocks of columns; no panels
        else:
            self.lanes, self.panel = FLAVOURS[flavour], PANEL[flavour]
        self.funcs: dict[tuple, object] = {}
        self.consts: dict[tuple, object] = {}

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

    def const(self, owner, name: str, make):
        """The constant `make()` of `owner` (a spec object) called `name`, built once."""
        key = (id(owner), name)
        if key not in self.consts:
            self.consts[key] = (self.relax.const(np.ascontiguousarray(make())), owner)  # owner kept alive
        return self.consts[key][0]

    def shared(self, array: np.ndarray):
        """One constant per distinct content (the transforms every layer repeats stay in cache between layers)."""
        array = np.ascontiguousarray(array)
        key = ("content", array.dtype.str, array.shape, hashlib.sha1(array.tobytes()).hexdigest())
        if key not in self.consts:
            self.consts[key] = (self.relax.const(array), None)
        return self.consts[key][0]

    def _group_params(self, layer: Linear):
        """`pack_group_params` of a layer, computed once (every step function reads the same constants)."""
        key = (id(layer), "group_params")
        if key not in self.consts:
            codes, zero = unsigned_codes(layer)
            params = pack_group_params(codes, zero, layer.scale, self.lanes, layer.group, layer.bits, self.panel)
            self.consts[key] = (params, layer)
        return self.consts[key][0]

    def _packed(self, layer: Linear):
        """The layer's codes packed in panels (`pack_weight`; on a GPU in words, `gpu_matmul.pack_weight`), one
        constant for every step function."""
        if self.gpu:
            from qcompile.backends.tvm.kernels import gpu_matmul

            return self.const(layer, "packed", lambda: gpu_matmul.pack_weight(unsigned_codes(layer)[0], layer.bits))
        return self.const(
            layer, "packed", lambda: pack_weight(unsigned_codes(layer)[0], self.lanes, layer.bits, self.panel)
        )

    def float_linear(self, x, m: int, layer: Linear):
        """y [m, out_features] of a 4-bit linear layer on float x [m, in_features] (w4a16)."""
        k, n, lanes = layer.in_features, layer.out_features, self.lanes
        key = (id(layer), "float_params")
        if key not in self.consts:  # once for both step functions
            self.consts[key] = (pack_float_group_params(layer.zero, layer.scale, lanes, self.panel), layer)
        params = self.consts[key][0]
        args = [
            x,
            self._packed(layer),
            self.const(layer, "float_scale", lambda: params[0]),
            self.const(layer, "float_zero", lambda: params[1]),
        ]
        padded = padded_columns(n, lanes, self.panel)
        y = self.call(
            ("fmm", m, k, n, layer.group, self.flavour),
            lambda: self.k.int4_float_matmul(m, k, n, layer.group, self.flavour, panel=self.panel),
            args,
            (m, padded),
        )
        return y if padded == n else self.slice(y, 0, n)

    def slice(self, x, begin: int, end: int, axis: int = 1):
        return self.bb.emit(self.relax.op.strided_slice(x, axes=[axis], begin=[begin], end=[end]))

    def reshape(self, x, shape):
        return self.bb.emit(self.relax.op.reshape(x, shape))

    def add(self, a, b):
        return self.bb.emit(self.relax.op.add(a, b))

    def transform(self, x, m: int, width: int, step: Kronecker | ChannelScale):
        """One step of a transform chain on x [m, width] (a Kronecker step per row)."""
        if isinstance(step, ChannelScale):
            args = [x, self.shared(step.c)]
            return self.call(("scale", m, width), lambda: self.k.channel_scale(m, width), args, (m, width))
        a, b = step.a.shape[0], step.b.shape[0]
        args = [x, self.shared(step.a), self.shared(step.b)]
        return self.call(("kron", m, a, b), lambda: self.k.kronecker(m, a, b), args, (m, width))

    def unfused(self, x, m: int, k: int, prologue: Prologue | None, steps):
        """`prologue`(x) and then the transform steps, a kernel each (RMSNorm, or SiLU·up of x's halves)."""
        if prologue is not None and prologue.kind == "rms":
            x = _norm(self, x, m, k, prologue.eps, prologue.gamma, prologue.owner)
        elif prologue is not None:
            x = self.call(("silu", m, k), lambda: self.k.silu_mul(m, k), [x], (m, k))
        for step in steps:
            x = self.transform(x, m, k, step)
        return x

    def quantized_input(self, x, m: int, layer: Linear, prologue: Prologue | None):
        """The per-token codes, scales [and zero points] of the layer's input: one `fused` kernel for its prologue,
        its transform (none, or one Kronecker step) and its quantizer where it has one (on a CPU), else a kernel a
        step."""
        k, act, steps = layer.in_features, layer.act, layer.transforms
        count = 2 if act.symmetric else 3
        outputs = [((m, k), "int8"), ((m,), "float32"), ((m,), "int32")]
        fusable = (prologue is not None or steps) and len(steps) <= 1 and all(isinstance(t, Kronecker) for t in steps)
        if fusable and not self.gpu:
            p = prologue or Prologue("none")
            kron = (steps[0].a.shape[0], steps[0].b.shape[0]) if steps else None
            one = np.ones((1, 1), np.float32)  # in place of the γ or factors the kernel does not read
            g = self.shared(one[0]) if p.gamma is None else self.const(p.owner, f"gamma{id(p.gamma)}", lambda: p.gamma)
            signs = kernels.signed_hadamard(steps[0].b) if steps else None
            right = self.shared(steps[0].b if signs is None else kernels.hadamard_table(signs)) if steps else None
            args = [x, g, *([self.shared(steps[0].a), right] if steps else [self.shared(one)] * 2)]
            hadamard = signs is not None
            key = ("fq", m, k, p.kind, float(p.eps), p.gamma is not None, kron, act.bits, act.symmetric, act.clip_ratio)
            key += ("fwht",) if hadamard else ()
            make = lambda: fused_quantize_func(  # noqa: E731
                m, k, p.kind, kron, act.bits, act.symmetric, act.clip_ratio, p.eps, p.gamma is not None, hadamard
            )
            quantized = self.call(key, make, args, outputs)
        else:
            quantized = self.call(
                ("tq", m, k, act.bits, act.symmetric, act.clip_ratio),
                lambda: self.k.token_quantize(m, k, act.bits, act.symmetric, act.clip_ratio),
                [self.unfused(x, m, k, prologue, steps)],
                outputs[:count],
            )
        return [self.bb.emit(self.relax.TupleGetItem(quantized, i)) for i in range(count)]

    def linear(self, x, m: int, layer: Linear, prologue: Prologue | None = None):
        """y [m, out_features] of a 4- or 8-bit linear layer on `prologue`(x) [m, in_features]."""
        k, n = layer.in_features, layer.out_features
        if layer.act is None:
            return self.float_linear(self.unfused(x, m, k, prologue, layer.transforms), m, layer)
        asym = not layer.act.symmetric
        tq = self.quantized_input(x, m, layer, prologue)
        weights = [self._packed(layer)]
        weights += [
            self.const(layer, name, lambda i=i: self._group_params(layer)[i])
            for i, name in enumerate(("scale", "zero"))
        ]
        sums = [self.const(layer, "sums", lambda: self._group_params(layer)[2])] if asym else []
        args = [tq[0], *weights, *sums, *tq[1:]]
        padded = padded_columns(n, self.lanes, self.panel)
        y = self.call(
            ("mm", m, k, n, layer.group, asym, self.flavour, layer.bits),
            lambda: self.k.int4_matmul(
                m, k, n, layer.group, self.flavour, act_zero=asym, bits=layer.bits, panel=self.panel
            ),
            args,
            (m, padded),
        )
        return y if padded == n else self.slice(y, 0, n)


@dataclasses.dataclass(frozen=True)
class Prologue:
    """The float step in front of a linear layer that its quantizer takes in (`fused`): the block's RMSNorm ("rms":
    ε, γ or None, the spec object that owns γ) or SwiGLU's SiLU·up ("silu": the input holds gate, then up);
    "none" for the fused kernel's signature when only a transform is fused."""

    kind: str
    eps: float = 0.0
    gamma: np.ndarray | None = None
    owner: object = None


def build_decode(
    decoder: Decoder,
    capacity: int,
    flavour: str,
    target,
    head_dtype: str = "float32",
    chunk: int | None = 64,
    bind: bool = True,
):
    """The compiled steps (a Relax VM executable) of `decoder` for a cache of `capacity` positions: `decode` (one
    token) and, with a `chunk`, `prefill` (`chunk` tokens, the last one's logits), sharing the packed weights.
    `head_dtype` "float16" stores a float LM head in half precision, "int8" as symmetric codes with a scale per
    vocabulary entry (`kernels.quantize_gemv_weight`): a half or a quarter of the bytes every step reads, the logits
    then differing from the artifact's by the weights' rounding (opt-ins; their perplexity is measured in the
    runtime table). flavour `GPU_FLAVOUR` with bind=False and a CPU target: the CUDA step with serial thread loops,
    on the CPU (its tests)."""
    from qcompile.backends.tvm.build import compile_relax

    _check(decoder)
    if head_dtype not in HEAD_DTYPES:
        raise ValueError(f"the LM head is stored as float32, float16 or int8, not {head_dtype}")
    b = _Builder(flavour, bind)
    _emit_step(b, decoder, "decode", 1, capacity, head_dtype)
    if chunk:
        _emit_step(b, decoder, "prefill", chunk, capacity, head_dtype)
    return compile_relax(b.bb.get(), target)


def _emit_step(b: _Builder, decoder: Decoder, name: str, m: int, capacity: int, head_dtype: str) -> None:
    """Relax function `name(tokens i32 [m], pos i32 [1], *cache) → logits f32 [1, vocab]` of the last token."""
    from tvm import relax

    tokens = relax.Var("tokens", relax.TensorType((m,), "int32"))
    pos = relax.Var("pos", relax.TensorType((1,), "int32"))
    cache = [relax.Var(f"cache{i}", relax.TensorType(s, t)) for i, (s, t) in enumerate(cache_layout(decoder, capacity))]
    with b.bb.function(name, [tokens, pos, *cache]):
        with b.bb.dataflow():
            x = b.bb.emit(relax.op.take(b.const(decoder, "embedding", lambda: decoder.embedding), tokens, axis=0))
            half, inv = decoder.head_dim // 2, decoder.rope_inv_freq
            angles = b.call(
                ("rope_table", m, decoder.head_dim),
                lambda: b.k.rope_table(m, decoder.head_dim, inv),
                [pos],
                [((m, half), "float32"), ((m, half), "float32")],
            )
            table = [b.bb.emit(relax.TupleGetItem(angles, i)) for i in range(2)]
            slot = 0
            for block in decoder.blocks:
                x, slot = _block(b, decoder, block, x, m, pos, table, cache, slot, capacity)
            last = x if m == 1 else b.slice(x, m - 1, m, axis=0)
            normed = _norm(b, last, 1, decoder.hidden, decoder.rms_eps, decoder.final_norm, decoder)
            out = b.bb.emit_output(_lm_head(b, normed, decoder, head_dtype))
        b.bb.emit_func_output(out)


def _norm(b: _Builder, x, m: int, d: int, eps: float, gamma, owner):
    key = ("rms", m, d, float(eps), gamma is not None)
    args = [x] if gamma is None else [x, b.const(owner, f"gamma{id(gamma)}", lambda: gamma)]
    return b.call(key, lambda: b.k.rms_norm(m, d, eps, gamma is not None), args, (m, d))


def _lm_head(b: _Builder, x, decoder: Decoder, dtype: str):
    head = decoder.lm_head
    if head.codes is not None:
        return b.linear(x, 1, head)
    k, n = head.weight.shape
    if dtype == "int8":
        codes, scale = kernels.quantize_gemv_weight(head.weight)
        weights = [
            b.const(head, "packed_int8", lambda: b.k.pack_gemv_weight(codes, "int8")),
            b.const(head, "scale_int8", lambda: scale),
        ]
    else:
        weights = [b.const(head, f"packed_{dtype}", lambda: b.k.pack_gemv_weight(head.weight, dtype))]
    y = b.call(
        ("gemv", k, n, dtype),
        lambda: b.k.gemv(k, n, dtype=dtype),
        [x, *weights],
        (1, kernels.gemv_columns(n)),
    )
    return y if n == kernels.gemv_columns(n) else b.slice(y, 0, n)


def _cache_write(b: _Builder, new, m, pos, cache, slot, quant, as_codes, kvh, dim, capacity):
    """Write `new` [m, kvh, dim] into the cache tensors at `slot`, in place; returns (the tensors the attention
    reads, the next slot)."""
    from tvm import relax

    if quant is None or not as_codes:
        if quant is None:
            key = ("kvw", m, kvh, dim, capacity)
            gv = b.kernel(key, lambda: b.k.cache_write(m, kvh, dim, capacity, None, True, 1.0))
        else:
            key = ("kvf", m, kvh, dim, capacity, quant.bits, quant.symmetric, quant.clip_ratio)
            gv = b.kernel(
                key,
                lambda: b.k.cache_write(
                    m, kvh, dim, capacity, quant.bits, quant.symmetric, quant.clip_ratio, as_codes=False
                ),
            )
        out = b.bb.emit(relax.call_tir_inplace(gv, [new, pos, cache[slot]], [2], cache[slot].ty))
        return [out], slot + 1
    key = ("kvq", m, kvh, dim, capacity, quant.bits, quant.symmetric, quant.clip_ratio)
    gv = b.kernel(key, lambda: b.k.cache_write(m, kvh, dim, capacity, quant.bits, quant.symmetric, quant.clip_ratio))
    tensors = cache[slot : slot + 3]
    out = b.bb.emit(relax.call_tir_inplace(gv, [new, pos, *tensors], [2, 3, 4], [t.ty for t in tensors]))
    return [b.bb.emit(relax.TupleGetItem(out, i)) for i in range(3)], slot + 3


def _rope(b: _Builder, x, m: int, heads: int, dim: int, table, transform):
    """RoPE of x [m, heads, dim], then the per-head transform: one kernel for a Kronecker step, else a kernel each."""
    if isinstance(transform, Kronecker):
        a, n = transform.a.shape[0], transform.b.shape[0]
        y = b.call(
            ("rope_kron", m, heads, dim, a, n),
            lambda: b.k.rope_kronecker(m, heads, dim, a, n),
            [x, *table, b.shared(transform.a), b.shared(transform.b)],
            (m * heads, dim),
        )
        return b.reshape(y, (m, heads, dim))
    x = b.call(("rope", m, heads, dim), lambda: b.k.rope(m, heads, dim), [x, *table], (m, heads, dim))
    if transform is None:
        return x
    return b.reshape(b.transform(b.reshape(x, (m * heads, dim)), m * heads, dim, transform), (m, heads, dim))


def _block(b: _Builder, decoder: Decoder, block, x, m: int, pos, table, cache, slot: int, capacity: int):
    """One block of the step. q, k and v come out of the q/k/v matmul's output roped by one kernel (`qkv_rope`, on a
    CPU) where the block has no per-head transforms, else by slices and `_rope`."""
    from tvm import relax

    heads, kvh, dim = decoder.heads, decoder.kv_heads, decoder.head_dim
    qkv = b.linear(x, m, block.qkv, Prologue("rms", decoder.rms_eps, block.attn_norm, block))
    dq, dkv = heads * dim, kvh * dim
    if block.q_transform is None and block.k_transform is None and not b.gpu:
        split = b.call(
            ("qkv_rope", m, heads, kvh, dim),
            lambda: kernels.qkv_rope_func(m, heads, kvh, dim),
            [qkv, *table],
            [((m, heads, dim), "float32"), ((m, kvh, dim), "float32"), ((m, kvh, dim), "float32")],
        )
        q, k, v = (b.bb.emit(relax.TupleGetItem(split, i)) for i in range(3))
    else:
        q = b.reshape(b.slice(qkv, 0, dq), (m, heads, dim))
        k = b.reshape(b.slice(qkv, dq, dq + dkv), (m, kvh, dim))
        v = b.reshape(b.slice(qkv, dq + dkv, dq + 2 * dkv), (m, kvh, dim))
        q = _rope(b, q, m, heads, dim, table, block.q_transform)
        k = _rope(b, k, m, kvh, dim, table, block.k_transform)
    if (block.key_quant is None) != (block.value_quant is None):
        raise UnsupportedDecoder("keys and values must both be quantized, or both float")
    quantized = _as_codes(block)
    keys, slot = _cache_write(b, k, m, pos, cache, slot, block.key_quant, quantized, kvh, dim, capacity)
    values, slot = _cache_write(b, v, m, pos, cache, slot, block.value_quant, quantized, kvh, dim, capacity)
    shift = 0 if not quantized or block.key_quant.symmetric else 128
    attended = b.call(
        ("attn", m, heads, kvh, dim, capacity, decoder.score_scale, quantized, shift),
        lambda: b.k.attention(m, heads, kvh, dim, capacity, decoder.score_scale, quantized, shift),
        [q, pos, *keys, *values],
        (m, heads * dim),
    )
    x = b.add(x, b.linear(attended, m, block.o))
    gate_up = b.linear(x, m, block.gate_up, Prologue("rms", decoder.rms_eps, block.mlp_norm, block))
    return b.add(x, b.linear(gate_up, m, block.down, Prologue("silu"))), slot
