"""The decoder reader (`backends.tvm.decoder.reader`) and its NumPy reference run: on tiny Llama artifacts of
every supported form (4- and 8-bit weights, per channel and in groups, symmetric and asymmetric per-token
activations with a clip ratio, rotate's online and per-head transforms, a KV cache stored as 4-bit codes, an
intact-kv prefix, FlatQuant's transform chain), the spec read off the graph has the expected structure and
its reference run gives ONNX Runtime's logits on the artifact, for a prefill and decode steps that feed the
previous presents back; unsupported forms raise `UnsupportedDecoder` naming what."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from qcompile.backends.tvm.decoder import reference
from qcompile.backends.tvm.decoder.reader import UnsupportedDecoder, read_decoder
from qcompile.backends.tvm.decoder.spec import ChannelScale, Kronecker
from qcompile.runtime.sessions import make_session
from qcompile.testing.tiny_llama import DECODER_FORMS


def _ort_steps(path: Path, decoder, chunks):
    """ONNX Runtime's logits for each chunk of token ids, feeding the previous presents back as the past."""
    session = make_session(str(path))
    names = [o.name for o in session.get_outputs()]
    state, logits = None, []
    for chunk in chunks:
        feeds = {"input_ids": chunk[None].astype(np.int64)}
        for meta in session.get_inputs():
            if meta.name == "input_ids":
                continue
            if state is None:
                dtype = {"tensor(float)": np.float32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8}[meta.type]
                last = 1 if meta.name.endswith(("_scale", "_zero_point")) else decoder.head_dim
                feeds[meta.name] = np.zeros((1, decoder.kv_heads, 0, last), dtype)
            else:
                feeds[meta.name] = state[meta.name.replace("past_key_values", "present")]
        state = dict(zip(names, session.run(None, feeds)))
        logits.append(state["logits"][0])
    return logits


# Two runtimes that sum floats in another order can put a per-token quantizer's input on either side of a rounding
# boundary: one code moves by a step and the logits by up to about 1e-3 of their range (8-bit codes, measured on a
# Zen 3 over six seeds: five at 5e-7, one at 1.1e-3). A misread zero point, scale or transform moves them by O(1).
FLIP_TOLERANCE = 2e-3


@pytest.mark.parametrize("form", [f for f in DECODER_FORMS if f != "fp4"])
def test_reference_run_of_the_spec_gives_onnx_runtimes_logits(tiny_llama_artifact, form) -> None:
    path = tiny_llama_artifact(form)
    decoder = read_decoder(ir.load(str(path)))
    ids = np.random.default_rng(0).integers(0, decoder.vocab, 9)
    chunks = [ids[:6], ids[6:7], ids[7:8], ids[8:9]]
    cache = reference.Cache.empty(decoder)
    for chunk, want in zip(chunks, _ort_steps(path, decoder, chunks)):
        got, cache = reference.step(decoder, chunk, cache)
        np.testing.assert_allclose(got, want, rtol=0, atol=FLIP_TOLERANCE * float(np.abs(want).max()))
        assert np.array_equal(got.argmax(-1), want.argmax(-1))


def test_structure_of_each_form(tiny_llama_artifact) -> None:
    plain = read_decoder(ir.load(str(tiny_llama_artifact("w4a8"))))
    block = plain.blocks[0]
    assert (len(plain.blocks), plain.heads, plain.kv_heads, plain.head_dim) == (2, 4, 2, 16)
    assert block.qkv.splits == (64, 32, 32) and block.gate_up.splits == (128, 128)
    assert (block.qkv.bits, block.qkv.group, block.qkv.act.bits, block.qkv.act.symmetric) == (4, 64, 8, True)
    assert block.qkv.codes.min() >= 0 and block.qkv.codes.max() <= 15 and block.attn_norm is not None
    assert block.key_quant is None and block.q_transform is None and plain.lm_head.codes is None

    rotated = read_decoder(ir.load(str(tiny_llama_artifact("rotate-w4a4kv4")))).blocks[0]
    assert rotated.attn_norm is None and rotated.qkv.transforms == ()
    assert [type(t) for t in rotated.o.transforms] == [Kronecker] == [type(t) for t in rotated.down.transforms]
    assert isinstance(rotated.k_transform, Kronecker) and isinstance(rotated.q_transform, Kronecker)
    assert rotated.key_quant.bits == 4 and not rotated.key_quant.symmetric
    assert rotated.qkv.act.bits == 4 and not rotated.qkv.act.symmetric and rotated.qkv.act.clip_ratio < 1

    prefixed = read_decoder(ir.load(str(tiny_llama_artifact("intact-kv")))).blocks[1]
    assert prefixed.prefix_key.shape == prefixed.prefix_value.shape == (2, 2, 16)

    assert read_decoder(ir.load(str(tiny_llama_artifact("w8a8")))).blocks[0].down.bits == 8
    grouped = read_decoder(ir.load(str(tiny_llama_artifact("w4a16-g32")))).blocks[0]
    assert grouped.qkv.group == 32 and grouped.qkv.zero.shape == (2, 128) and grouped.qkv.act is None
    # groups of 48 over K = 64 (and 128): the padded last group is cut; groups of gcd(K, 48) = 16 with repeated
    # scales give the same weight (zero points are re-centred per group of 16, as for every 4-bit weight)
    cut = read_decoder(ir.load(str(tiny_llama_artifact("w4a16-g48")))).blocks[0]
    assert (cut.qkv.in_features, cut.qkv.group, cut.qkv.zero.shape) == (64, 16, (4, 128))
    assert (cut.down.in_features, cut.down.group) == (128, 16)
    np.testing.assert_array_equal(cut.qkv.scale[0], cut.qkv.scale[2])  # rows 0..47 share a group's scales
    assert not np.array_equal(cut.qkv.scale[2], cut.qkv.scale[3])

    flat = read_decoder(ir.load(str(tiny_llama_artifact("flatquant")))).blocks[0]
    assert [type(t) for t in flat.qkv.transforms] == [ChannelScale, Kronecker]
    assert [type(t) for t in flat.o.transforms] == [Kronecker, ChannelScale, Kronecker]
    assert flat.qkv.transforms[1].kind == "KroneckerAffine"


def test_unsupported_forms_are_named(tiny_llama_artifact) -> None:
    with pytest.raises(UnsupportedDecoder, match="floating-point quantizers"):
        read_decoder(ir.load(str(tiny_llama_artifact("fp4"))))
    model = ir.load(str(tiny_llama_artifact("w4a8")))
    model.graph.inputs[:] = [v for v in model.graph.inputs if v.name == "input_ids"]
    with pytest.raises(UnsupportedDecoder, match="past_key_values"):
        read_decoder(model)
