"""The TVM decode step (`backends.tvm.decoder.build`): on tiny Llama artifacts, token by token, its logits are
the NumPy reference's (and so ONNX Runtime's on the artifact: tests/backends/test_tvm_decoder_reader.py) up to
float rounding, with 4- and 8-bit weights, the KV cache kept in place in float or as 4-bit codes (a float cache
of quantized values behind an intact-kv prefix), through rotate's and FlatQuant's transforms and grouped
asymmetric weights; a full cache and unsupported forms are refused with their reason."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from qcompile.backends.tvm.decoder import kernels, reference
from qcompile.backends.tvm.decoder.build import build_decode, cache_layout, cache_spec, stored_head
from qcompile.backends.tvm.decoder.reader import UnsupportedDecoder, read_decoder
from qcompile.backends.tvm.decoder.session import DecodeSession
from qcompile.backends.tvm.decoder.spec import Kronecker
from qcompile.backends.tvm.kernels.int4_matmul import flavours_for
from qcompile.backends.tvm.target import cpu_features, host_target

FLAVOURS = flavours_for(cpu_features(host_target(1)))
pytestmark = pytest.mark.skipif(not FLAVOURS, reason="the 4-bit matmul needs AVX2 at least")


def _session(path, capacity: int = 16, chunk: int = 4) -> tuple:
    decoder = read_decoder(ir.load(str(path)))
    executable = build_decode(decoder, capacity, FLAVOURS[0], host_target(2), chunk=chunk)
    return decoder, DecodeSession(executable, cache_spec(decoder, capacity), chunk)


@pytest.mark.parametrize(
    "form", ["w4a8", "rotate-w4a4kv4", "w4a8-g32-asym", "flatquant", "intact-kv", "w8a8", "w4a16-g32", "w4a16-g48"]
)
def test_decode_steps_equal_the_reference(tiny_llama_artifact, form) -> None:
    decoder, session = _session(tiny_llama_artifact(form))
    cache = reference.Cache.empty(decoder)
    for token in np.random.default_rng(1).integers(0, decoder.vocab, 8):
        got = session.step(int(token))
        want, cache = reference.step(decoder, np.array([token]), cache)
        np.testing.assert_allclose(got, want[0], rtol=0, atol=1e-5 * float(np.abs(want).max()))
        assert got.argmax() == want[0].argmax()


@pytest.mark.parametrize("form", ["rotate-w4a4kv4", "w4a8", "flatquant", "w4a16-g32"])
def test_each_quantizer_takes_in_the_norm_silu_and_transform_before_it(tiny_llama_artifact, form) -> None:
    """The step's kernels: with rotate (one Kronecker step per transformed input) or none, every integer linear's
    input comes out of a fused quantizer: no RMSNorm kernel but the final one, no SiLU, no Kronecker transform of
    a linear's input, and a bare quantizer only on an input with no float step in front (w4a8's o); RoPE and a
    per-head q/k transform run as one kernel, and without such transforms RoPE runs in the kernel that splits the
    q/k/v matmul's output. FlatQuant's
    chains (a channel scaling and one or two Kronecker steps) keep a kernel per step; w4a16 (float activations)
    has no quantizer to fuse into."""
    from qcompile.backends.tvm.decoder.build import _Builder, _emit_step

    decoder = read_decoder(ir.load(str(tiny_llama_artifact(form))))
    builder = _Builder(FLAVOURS[0])
    _emit_step(builder, decoder, "decode", 1, 8, "float32")
    keys = list(builder.funcs)
    kinds = [key[0] for key in keys]
    if form in ("flatquant", "w4a16-g32"):
        assert "fq" not in kinds and "silu" in kinds
        return
    assert "fq" in kinds and "silu" not in kinds and kinds.count("rms") == 1  # the final norm
    assert ("tq" in kinds) == (form == "w4a8")  # without rotate the o projection's input has no float step to fuse
    assert "kron" not in kinds  # the per-head q/k transforms run with RoPE (rope_kron), the others with a quantizer
    transformed = any(isinstance(t, Kronecker) for blk in decoder.blocks for t in (blk.q_transform, blk.k_transform))
    assert ("rope_kron" in kinds) == transformed and "rope" not in kinds  # without them: qkv_rope
    assert ("qkv_rope" in kinds) == (not transformed)


@pytest.mark.parametrize("form", ["w4a8", "rotate-w4a4kv4"])
def test_a_chunked_prefill_gives_the_logits_of_token_by_token_steps(tiny_llama_artifact, form) -> None:
    """10 tokens = two prefill chunks of 4 (causal within each chunk, reading the cache before it) and two decode
    steps; then decoding goes on from the prefilled cache."""
    decoder, session = _session(tiny_llama_artifact(form))
    ids = np.random.default_rng(2).integers(0, decoder.vocab, 12)
    want, cache = reference.step(decoder, ids[:10], reference.Cache.empty(decoder))
    got = session.prefill(ids[:10])
    assert session.position == 10
    np.testing.assert_allclose(got, want[-1], rtol=0, atol=1e-5 * float(np.abs(want[-1]).max()))
    for token in ids[10:]:
        want, cache = reference.step(decoder, np.array([token]), cache)
        np.testing.assert_allclose(session.step(int(token)), want[0], rtol=0, atol=1e-5 * float(np.abs(want).max()))
    with pytest.raises(ValueError, match="at least one token"):
        session.prefill([])


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_a_stored_lm_head_gives_the_logits_of_the_rounded_head(tiny_llama_artifact, dtype) -> None:
    decoder = read_decoder(ir.load(str(tiny_llama_artifact("w4a8"))))
    executable = build_decode(decoder, 8, FLAVOURS[0], host_target(2), dtype, chunk=None)
    session = DecodeSession(executable, cache_spec(decoder, 8), chunk=None)
    rounded = stored_head(decoder, dtype)
    if dtype == "float16":
        np.testing.assert_array_equal(rounded.lm_head.weight, decoder.lm_head.weight.astype(np.float16))
    else:
        codes, scale = kernels.quantize_gemv_weight(decoder.lm_head.weight)
        np.testing.assert_array_equal(rounded.lm_head.weight, codes * scale[: codes.shape[1]])
    assert not np.array_equal(rounded.lm_head.weight, decoder.lm_head.weight)  # the rounding changes the head
    assert stored_head(decoder, "float32") is decoder
    cache = reference.Cache.empty(rounded)
    for token in (3, 1, 4):
        want, cache = reference.step(rounded, np.array([token]), cache)
        np.testing.assert_allclose(session.step(token), want[0], rtol=0, atol=1e-5 * float(np.abs(want).max()))
    with pytest.raises(ValueError, match="float32, float16 or int8"):
        build_decode(decoder, 8, FLAVOURS[0], host_target(2), "bfloat16", chunk=None)


def test_behind_an_intact_kv_prefix_the_quantized_cache_is_float(tiny_llama_artifact) -> None:
    decoder, session = _session(tiny_llama_artifact("intact-kv"), capacity=8, chunk=2)
    assert [dtype for _, dtype in cache_layout(decoder, 8)] == ["float32"] * 4
    assert session.position == 2  # the sequence follows the prefix's two positions


def test_the_cache_layout_and_capacity(tiny_llama_artifact) -> None:
    decoder, session = _session(tiny_llama_artifact("rotate-w4a4kv4"), capacity=3, chunk=2)
    kinds = [dtype for _, dtype in cache_layout(decoder, 3)]
    assert kinds == ["int8", "float32", "float32"] * 4  # 2 layers × keys and values: codes, scales, zero points
    for token in (1, 2, 3):
        session.step(token)
    with pytest.raises(ValueError, match="3 positions"):
        session.step(4)
    session.reset()
    with pytest.raises(ValueError, match="3 positions"):
        session.prefill([1, 2, 3, 4])
    session.reset()
    assert session.position == 0 and np.isfinite(session.step(5)).all()


def test_eight_bit_weights_with_float_activations_are_refused(tiny_llama_artifact) -> None:
    decoder = read_decoder(ir.load(str(tiny_llama_artifact("w8a8"))))
    decoder.blocks[1].down.act = None
    with pytest.raises(UnsupportedDecoder, match="block 1 down: .* 8-bit weights, activations float"):
        build_decode(decoder, 8, FLAVOURS[0], host_target(2), chunk=None)
