"""zoo:tiny-llama: the seeded random Llama exports to ONNX, matches PyTorch, and runs through the CLI."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from qcompile.zoo.lm_export import kv_cache_of

pytest.importorskip("transformers", reason="zoo:tiny-llama needs the llm extra (pip install 'qcompile[llm]')")

from qcompile import zoo  # noqa: E402
from qcompile.cli import main  # noqa: E402
from qcompile.testing.tiny_llama import VOCAB, TinyLlamaTask, tiny_llama_module, tiny_llama_onnx  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    """One cache (one export) for the whole module."""
    root = tmp_path_factory.mktemp("tiny_llama_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QCOMPILE_CACHE", str(root))
        tiny_llama_onnx()
        yield root


def test_export_is_cached_and_matches_pytorch(cache: Path) -> None:
    import onnxruntime as ort
    import torch

    path = tiny_llama_onnx()
    assert path.is_relative_to(cache / "models") and path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    model = TinyLlamaTask().load()
    kv = kv_cache_of(model)
    assert [v.name for v in model.graph.inputs] == [
        "input_ids",
        *[f"past_key_values.{i}.key" for i in range(2)],
        *[f"past_key_values.{i}.value" for i in range(2)],
    ]
    assert [v.name for v in model.graph.outputs][0] == "logits" and len(model.graph.outputs) == 1 + 4
    ops = {node.op_type for node in model.graph}
    assert {"MatMul", "Softmax"} <= ops
    ids = np.random.default_rng(3).integers(0, VOCAB, size=(2, 20), dtype=np.int64)  # not the export's shape
    got = ort.InferenceSession(str(path)).run(None, {"input_ids": ids, **kv.empty(2)})[0]
    with torch.no_grad():
        expected = tiny_llama_module()(input_ids=torch.from_numpy(ids)).logits.numpy()
    assert got.shape == (2, 20, VOCAB)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_task_windows_and_float_perplexity(cache: Path) -> None:
    import onnxruntime as ort

    task = zoo.get("tiny-llama")
    assert task.metric_name == "perplexity" and task.higher_is_better is False
    assert task.sample_limits() == (64, 16) and task.default_eval_samples == 16
    assert task.latency_feeds()["input_ids"].shape == (1, 32)
    session = ort.InferenceSession(str(tiny_llama_onnx()))
    scores = task.evaluate({"fp": lambda feeds: session.run(None, feeds)[0]}, samples=4, seed=0, progress=False)
    assert scores["fp"]["top1_agreement"] == 1.0
    assert 50 < scores["fp"]["perplexity"] < 5 * VOCAB  # random weights on random tokens: about the vocabulary


@pytest.mark.parametrize("passes", ["fp", "w8a8"])
def test_cli_runs_end_to_end(cache: Path, tmp_path: Path, passes: str) -> None:
    out = tmp_path / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = ["zoo:tiny-llama", "--passes", passes, "-o", str(out), "--calib-samples", "8"]  # default --eval-samples
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([*argv, "--quiet", "--no-baselines"])
    assert code == 0, stderr.getvalue()
    report = json.loads((out / "report.json").read_text())
    metric = report["metric"]
    assert metric["name"] == "perplexity" and metric["higher_is_better"] is False
    assert np.isfinite(metric["fp"]) and np.isfinite(metric["quantized"])
    assert report["all_metrics"]["ort_fp32"]["windows"] == 16  # all the task's windows, not the default 1000
    assert report["eval_samples"] == 16  # the report says how many windows were scored
    agreement = report["all_metrics"]["qcompile"]["top1_agreement"]
    if passes == "fp":
        assert metric["quantized"] == pytest.approx(metric["fp"], rel=1e-5) and agreement == 1.0
    else:
        assert abs(metric["quantized"] - metric["fp"]) < 0.05 * metric["fp"] and agreement > 0.7
