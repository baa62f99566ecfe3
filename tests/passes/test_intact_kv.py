"""intact-kv: a pivot prefix's float KV cache baked into the tiny Llama: the artifact continues every sequence
as the float model continues prefix + sequence, presents leave the prefix out, and the job compares against a
float reference given the same prefix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qcompile import runtime
from qcompile.cli import main
from qcompile.errors import InputError
from qcompile.frontends.onnx import load
from qcompile.passes.transforms.intact_kv import IntactKvPass, intact_kv_prefix, parse_prefix
from qcompile.pipeline.context import CalibrationData, PipelineContext
from qcompile.pipeline.run import run_passes
from qcompile.runtime.qdq import to_qdq
from qcompile.testing.tiny_llama import VOCAB
from qcompile.zoo.lm_export import kv_cache_of, prefill_feeds

PREFIX = [5, 7, 9]


def _ids(length: int = 10, seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (2, length)).astype(np.int64)


def test_the_baked_prefix_continues_sequences_like_the_float_model_on_prefix_plus_sequence(tiny_llama_export):
    model = load(tiny_llama_export("pow2"))
    ids = _ids()
    with_prefix = np.concatenate([np.tile(PREFIX, (2, 1)), ids], axis=1)
    names = ["logits", "present.1.key", "present.0.value"]
    expected = runtime.run(runtime.make_session(model), prefill_feeds(model, with_prefix), names)
    result = IntactKvPass(prefix="5+7+9").call(model)
    assert result.stats["prefix_ids"] == PREFIX and intact_kv_prefix(model) == PREFIX
    got = runtime.run(runtime.make_session(model), prefill_feeds(model, ids), names)
    np.testing.assert_allclose(got["logits"], expected["logits"][:, 3:], rtol=0, atol=1e-5)
    for name in names[1:]:  # the presents leave the prefix out: callers feed them back as the past
        assert got[name].shape[2] == ids.shape[1]
        np.testing.assert_allclose(got[name], expected[name][:, :, 3:], rtol=0, atol=1e-5)


def test_a_decode_step_after_the_baked_prefix_matches_the_prefill(tiny_llama_export):
    model = load(tiny_llama_export("pow2"))
    IntactKvPass(prefix="5 7 9").call(model)
    session, kv = runtime.make_session(model), kv_cache_of(model)
    ids = _ids(8)
    names = ["logits", *kv.outputs()]
    first = dict(zip(names, session.run(names, prefill_feeds(model, ids[:, :7]))))
    step = session.run(["logits"], {"input_ids": ids[:, 7:], **kv.feeds_from(first)})[0]
    full = runtime.run(session, prefill_feeds(model, ids), ["logits"])["logits"]
    np.testing.assert_allclose(step[:, 0], full[:, 7], rtol=0, atol=1e-5)


def test_the_prefix_stays_float_when_the_rest_is_quantized(tiny_llama_export):
    model = load(tiny_llama_export("pow2"))
    ids = _ids()
    calibration = CalibrationData.from_list([prefill_feeds(model, ids)])
    run_passes(
        model,
        "intact-kv:prefix=5+7+9,w4a4kv4",
        calibration=calibration,
        context=PipelineContext(calibration=calibration),
    )
    prefix = next(v for v in model.graph.initializers.values() if v.name == "intact_kv.past_key_values.0.key")
    reference = load(tiny_llama_export("pow2"))
    float_keys = runtime.run(
        runtime.make_session(reference), prefill_feeds(reference, np.array([PREFIX])), ["present.0.key"]
    )["present.0.key"]
    np.testing.assert_array_equal(prefix.const_value.numpy(), float_keys)  # lossless: no quantizer on it
    assert np.all(
        np.isfinite(runtime.run(runtime.make_session(to_qdq(model)), prefill_feeds(model, ids), ["logits"])["logits"])
    )


@pytest.mark.parametrize(
    "prefix, named, expected",
    [
        ("bos", {"bos": [1]}, [1]),
        ("system", {"bos": [1], "system": [1, 4, 2]}, [1, 4, 2]),
        ("3+4", {}, [3, 4]),
        ("3 4", {}, [3, 4]),
        (7, {}, [7]),
    ],
)
def test_prefix_names_and_ids(prefix, named, expected):
    assert parse_prefix(prefix, named) == expected


@pytest.mark.parametrize(
    "prefix, message",
    [("bos", "needs the model's tokenizer"), ("x1", "bos, system or token ids"), ("-1", "non-negative")],
)
def test_bad_prefixes_are_input_errors(prefix, message):
    with pytest.raises(InputError, match=message):
        parse_prefix(prefix, {})


def test_intact_kv_after_quantization_or_without_a_cache_is_refused(tiny_llama_export, tmp_path):
    model = load(tiny_llama_export("pow2"))
    run_passes(model, "w8a8tok", calibration=None)
    with pytest.raises(InputError, match="before quantization"):
        IntactKvPass(prefix="1").call(model)


def test_the_cli_compares_against_a_float_reference_with_the_same_prefix(tmp_path: Path, isolated_cache: Path):
    out = tmp_path / "out"
    run = [
        "zoo:tiny-llama",
        "--passes",
        "intact-kv:prefix=5+7+9",
        "-o",
        str(out),
        "--eval-samples",
        "3",
        "--quiet",
        "--no-baselines",
    ]
    assert main(run) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["intact_kv_prefix"] == PREFIX
    # the only pass is the prefix itself, and the reference reads it too: the scores coincide
    scores = report["all_metrics"]
    assert scores["qcompile"]["perplexity"] == pytest.approx(scores["ort_fp32"]["perplexity"], rel=1e-6)
    assert scores["qcompile"]["top1_agreement"] == pytest.approx(1.0)
    assert all(g["agreement"]["qcompile"] == 1.0 for g in report["generations"])
