"""KV-cache sites and kv-quant on the tiny Llama exported with a cache: where the cache is written, the per-head
per-token grids against a NumPy reference, prefill/decode agreement, and the errors without a cache."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile import runtime
from qcompile.errors import InputError
from qcompile.frontends.onnx import load
from qcompile.ir import quant_meta
from qcompile.passes.transforms.kv_sites import find_kv_sites
from qcompile.pipeline.context import CalibrationData
from qcompile.pipeline.run import run_passes
from qcompile.runtime.qdq import to_qdq
from qcompile.testing.tiny_llama import VOCAB, tiny_llama_module
from qcompile.zoo.lm_export import export_causal_lm, kv_cache_of, prefill_feeds


def _ids(length: int = 12, seed: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (2, length)).astype(np.int64)


def _present(model, ids: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    session = runtime.make_session(to_qdq(model))
    return runtime.run(session, prefill_feeds(model, ids), names)


def ref_asymmetric_rows(x: np.ndarray, bits: int) -> np.ndarray:
    """Per-row (last axis) asymmetric fake quantization, float32 op for op (QuantSpec.per_token's algebra)."""
    levels = np.float32(2**bits - 1)
    lo = np.minimum(x.min(axis=-1, keepdims=True), np.float32(0))
    hi = np.maximum(x.max(axis=-1, keepdims=True), np.float32(0))
    s = np.maximum((hi - lo) / levels, np.float32(1e-12)).astype(np.float32)
    z = np.clip(np.rint(-lo / s), 0, levels)
    q = np.clip(np.rint(x / s) + z, 0, levels)
    return ((q - z) * s).astype(np.float32)


def test_every_layer_has_a_cache_site(tiny_llama_export) -> None:
    model = load(tiny_llama_export("pow2"))
    sites, skipped = find_kv_sites(model)
    assert [s.layer for s in sites] == [0, 1] and skipped == {}
    for site in sites:
        assert site.head_dim == 16 and site.new_key.producer().op_type == "Add"  # RoPE's q·cos + rot(q)·sin
        assert site.key_concat.outputs[0].name == f"present.{site.layer}.key"
        assert site.value_concat.outputs[0].name == f"present.{site.layer}.value"
        assert site.scores.op_type == "MatMul"


@pytest.mark.parametrize("bits", [4, 8])
def test_the_cache_holds_keys_and_values_on_per_head_per_token_grids(tiny_llama_export, bits: int) -> None:
    model = load(tiny_llama_export("pow2"))
    ids = _ids()
    names = ["present.0.key", "present.0.value", "logits"]
    before = _present(model, ids, names)
    records = run_passes(
        model, f"kv-quant:bits={bits}", calibration=CalibrationData.from_list([prefill_feeds(model, ids)])
    )
    assert records[-1]["stats"]["quantized"] == 4 and records[-1]["stats"]["layers"] == 2
    after = _present(model, ids, names)
    for name in names[:2]:  # layer 0's k and v do not depend on any quantized value
        np.testing.assert_allclose(after[name], ref_asymmetric_rows(before[name], bits), rtol=0, atol=1e-6)
    rows = after["present.0.key"].reshape(-1, 16).astype(np.float64)
    assert all(len(np.unique(np.round(r, 6))) <= 2**bits for r in rows)
    assert np.isfinite(records[-1]["sqnr_db"]) and records[-1]["sqnr_db"] < 60


def test_searched_clip_ratios_are_per_cache_site_and_match_the_search(tiny_llama_export) -> None:
    from qcompile.calibration.token_clip import TokenClipSearch

    model = load(tiny_llama_export("pow2"))
    batches = [prefill_feeds(model, _ids(seed=seed, length=40)) for seed in (1, 2)]
    names = ["present.0.key", "present.0.value"]
    before = [_present(model, batch["input_ids"], names) for batch in batches]
    records = run_passes(model, "kv-quant:bits=4:clip_ratio=search", calibration=CalibrationData.from_list(batches))
    stats = records[-1]["stats"]
    assert stats["clip_ratio"] == "search" and len(stats["clip_ratios"]) == 4
    sites = find_kv_sites(model)[0]
    for name, value in zip(names, (sites[0].new_key, sites[0].new_value), strict=True):
        reference = TokenClipSearch(4, False, rows_per_batch=10**6)
        for present in before:  # layer 0's new keys/values are the present rows of a prefill from an empty past
            reference.update(present[name])
        assert stats["clip_ratios"][value.name] == reference.best()
        assert quant_meta.get_quant(value).clip_ratio == pytest.approx(reference.best())


def test_a_kv_clip_search_needs_calibration_data(tiny_llama_export) -> None:
    with pytest.raises(InputError, match="clip_ratio=search needs calibration"):
        run_passes(load(tiny_llama_export("pow2")), "kv-quant:bits=4:clip_ratio=search")


def test_decode_reads_the_same_quantized_cache_as_prefill(tiny_llama_export) -> None:
    model = load(tiny_llama_export("pow2"))
    run_passes(model, "kv-quant:bits=4", calibration=None)
    session = runtime.make_session(to_qdq(model))
    kv = kv_cache_of(model)
    ids = _ids(10)
    names = ["logits", *kv.outputs()]
    prefill = dict(zip(names, session.run(names, prefill_feeds(model, ids[:, :9]))))
    step = session.run(["logits"], {"input_ids": ids[:, 9:], **kv.feeds_from(prefill)})[0]
    full = runtime.run(session, prefill_feeds(model, ids), ["logits"])["logits"]
    assert np.abs(step[:, 0] - full[:, 9]).max() <= 1e-4 * np.abs(full).max()


def test_kv_quant_without_a_cache_is_an_input_error(tmp_path) -> None:
    path = export_causal_lm(tiny_llama_module(0), tmp_path / "nocache" / "model.onnx", VOCAB, cache=False)
    model = load(path)
    assert find_kv_sites(model) == ([], {})
    with pytest.raises(InputError, match="needs a decoder exported with a KV cache"):
        run_passes(model, "kv-quant", calibration=None)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"bits": 1}, "bits"),
        ({"clip_ratio": 0}, "clip_ratio"),
        ({"clip_ratio": "best"}, "search"),
        ({"keys": False, "values": False}, "nothing"),
    ],
)
def test_bad_options_are_rejected(options: dict, message: str) -> None:
    from qcompile.passes.quantize.kv_cache import KvCacheQuantPass

    with pytest.raises(ValueError, match=message):
        KvCacheQuantPass(**options)


def test_the_artifact_stores_the_quantized_cache_as_codes_and_scales(tiny_llama_export) -> None:
    """to_qdq(kv_storage=True) (the exported artifact's form): uint8 codes plus a scale and zero point per head
    and token in and out; the same logits as the fake-quantized form; decode reads the stored codes."""
    from qcompile.generation import greedy_tokens
    from qcompile.zoo.lm_export import kv_cache_of_session

    model = load(tiny_llama_export("pow2"))
    run_passes(model, "kv-quant:bits=4", calibration=None)
    stored = runtime.make_session(to_qdq(model, kv_storage=True))
    simulated = runtime.make_session(to_qdq(model))
    kv = kv_cache_of_session(stored)
    types = {e.past: e.dtype for e in kv.entries}
    assert types["past_key_values.0.key"] == "uint8" and types["past_key_values.1.value"] == "uint8"
    assert (
        types["past_key_values.0.key_scale"] == "float32" and types["past_key_values.0.value_zero_point"] == "float32"
    )
    assert len(kv.entries) == 2 * 2 * 3 and kv.layers == 2
    ids = _ids(10)
    feeds = {"input_ids": ids, **kv.empty(2)}
    names = ["logits", *kv.outputs()]
    first = dict(zip(names, stored.run(names, {**feeds, "input_ids": ids[:, :9]})))
    assert first["present.0.key"].dtype == np.uint8 and first["present.0.key"].max() <= 15
    assert first["present.0.key_scale"].shape == (2, 2, 9, 1)
    reference = runtime.run(simulated, prefill_feeds(model, ids), ["logits"])["logits"]
    np.testing.assert_allclose(stored.run(["logits"], feeds)[0], reference, rtol=0, atol=1e-5)
    step = stored.run(["logits"], {"input_ids": ids[:, 9:], **kv.feeds_from(first)})[0]
    np.testing.assert_allclose(step[:, 0], reference[:, 9], rtol=0, atol=1e-4 * np.abs(reference).max())
    prompt = ids[0, :6].tolist()
    assert greedy_tokens(stored, prompt, 8) == greedy_tokens(simulated, prompt, 8)
