"""`qcompile zoo:tiny-llama --passes ... --target llvm`: the job compiles the decoder's steps into decoder.so, checks
them against ONNX Runtime on the artifact, scores, generates and times with them next to it; generation picks the
library where the folder has one; a CUDA target builds the library and says it was not run (no GPU here); GPUs
and forms the steps do not compile are refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qcompile.backends.tvm.kernels.int4_matmul import flavours_for
from qcompile.backends.tvm.target import cpu_features, host_target
from qcompile.cli import main
from qcompile.errors import InputError
from qcompile.folder_generation import open_steps
from qcompile.generation import OrtSteps, greedy_tokens
from qcompile.testing.tiny_llama import DECODER_FORMS

FLIP_TOLERANCE = 2e-3  # a per-token code on the other side of a rounding boundary (test_tvm_decoder_reader.py)

pytest.importorskip("transformers", reason="zoo:tiny-llama needs the llm extra (pip install 'qcompile[llm]')")
pytestmark = pytest.mark.skipif(
    not flavours_for(cpu_features(host_target(1))), reason="the 4-bit matmul needs AVX2 at least"
)


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_llama_cache):
    """One run of the intact-kv W4A4KV4 form (quantized cache, a float prefix in front) with --target llvm."""
    out = tmp_path_factory.mktemp("job") / "out"
    cache = tiny_llama_cache
    args = ["zoo:tiny-llama", "--passes", DECODER_FORMS["intact-kv"], "--target", "llvm", "-o", str(out)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QCOMPILE_CACHE", str(cache))
        assert main([*args, "--eval-samples", "2", "--no-baselines", "--no-html", "--quiet"]) == 0
    return out, json.loads((out / "report.json").read_text())


def test_the_library_files_are_written_and_listed(job) -> None:
    out, report = job
    for name in ("decoder.so", "decoder.tvm.json", "decoder.prefix.npz"):
        assert (out / name).is_file() and name in report["files"]
    tvm = report["tvm"]
    assert report["target"] == tvm["target"] and tvm["library_bytes"] == (out / "decoder.so").stat().st_size
    assert tvm["capacity"] >= 2048 and tvm["chunk"] == 31  # the latency window (32 tokens) less one


def test_the_library_agrees_with_onnx_runtime_on_the_artifact(job) -> None:
    """The in-job check (prefill and greedy steps), the perplexity it scores and its generations."""
    _, report = job
    check = report["tvm"]["check"]
    assert check["within_reference"] and check["argmax_agreement"] == 1.0
    assert 0 <= check["rel_rms_diff"] <= FLIP_TOLERANCE and 0 <= check["max_rel_diff"] <= FLIP_TOLERANCE
    assert 0 <= check["reference_rel_rms_diff"] <= FLIP_TOLERANCE and check["kl_divergence"] < 1e-5
    ours, ort = report["all_metrics"]["tvm_int"], report["all_metrics"]["qcompile"]
    assert ours["perplexity"] == pytest.approx(ort["perplexity"], rel=FLIP_TOLERANCE)
    assert report["metric_runtime"]["tvm_int"].startswith("TVM llvm decoder library")
    assert report["generations"]
    for item in report["generations"]:
        assert item["outputs"]["tvm_int"] == item["outputs"]["qcompile"]


def test_the_library_is_timed_next_to_onnx_runtime(job) -> None:
    _, report = job
    assert report["latency_ms"]["tvm_int"] > 0
    times = report["tvm"]["decode_ms"]
    assert times["context"] == 32 and all(times[label] > 0 for label in ("tvm_int", "qcompile", "ort_fp32"))


def test_generation_runs_the_library_where_the_folder_has_one(job) -> None:
    out, report = job
    steps, used = open_steps(out, out / "model.qdq.onnx")
    assert used.startswith("TVM library decoder.so")
    ort, used_ort = open_steps(out, out / "model.qdq.onnx", runtime="ort")
    assert isinstance(ort, OrtSteps) and used_ort.startswith("ONNX Runtime")
    prompt = np.random.default_rng(5).integers(0, 64, 6).tolist()
    assert greedy_tokens(steps, prompt, 8) == greedy_tokens(ort, prompt, 8)
    with pytest.raises(InputError, match="runtime must be one of"):
        open_steps(out, out / "model.qdq.onnx", runtime="llvm")


def test_generation_with_runtime_tvm_needs_a_library(tmp_path) -> None:
    with pytest.raises(InputError, match="holds no TVM decoder library: compile the model with --target llvm"):
        open_steps(tmp_path, tmp_path / "model.qdq.onnx", runtime="tvm")


@pytest.mark.parametrize(
    "passes, target, message",
    [
        ("w4a8", "cuda:sm_60", "__dp4a, which needs sm_61 or later"),
        ("w4a16:weight_bits=8:weight_group=32", "llvm", "8-bit weights, activations float"),
    ],
)
def test_targets_and_forms_the_steps_do_not_compile_are_refused(
    tmp_path, capsys, monkeypatch, tiny_llama_cache, passes, target, message
) -> None:
    monkeypatch.setenv("QCOMPILE_CACHE", str(tiny_llama_cache))
    out = tmp_path / "out"
    args = ["zoo:tiny-llama", "--passes", passes, "--target", target, "-o", str(out), "--eval-samples", "1"]
    assert main([*args, "--no-baselines", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_a_cuda_target_builds_the_library_and_says_it_did_not_run_it(tmp_path, monkeypatch, tiny_llama_cache) -> None:
    import tvm

    if tvm.cuda(0).exist:
        pytest.skip("a GPU is here: the job checks, scores and times the library on it")
    monkeypatch.setenv("QCOMPILE_CACHE", str(tiny_llama_cache))
    out = tmp_path / "out"
    args = ["zoo:tiny-llama", "--passes", "w4a8", "--target", "cuda:sm_80", "-o", str(out), "--eval-samples", "1"]
    assert main([*args, "--no-baselines", "--no-html", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    for name in ("decoder.so", "decoder.tvm.json"):
        assert (out / name).is_file() and name in report["files"]
    tvm_report = report["tvm"]
    assert tvm_report["kernels"] == "cuda" and "GPU machine" in tvm_report["not_run"] and "check" not in tvm_report
    assert "tvm_int" not in report["all_metrics"] and "decode_ms" not in tvm_report
    assert json.loads((out / "decoder.tvm.json").read_text())["arch"] == "sm_80"


def test_a_decoder_onnx_file_is_refused_with_what_to_give(tmp_path, capsys, tiny_llama_export) -> None:
    """A decoder given as an ONNX file runs on random inputs: its library could not be scored or checked on text."""
    out = tmp_path / "out"
    args = [tiny_llama_export("pow2"), "--passes", "w4a8", "--target", "llvm", "-o", str(out), "--no-baselines"]
    args += ["--input-shape", "input_ids=1x16"]
    for layer in range(2):
        args += [f"--input-shape=past_key_values.{layer}.{kind}=1x2x4x16" for kind in ("key", "value")]
    assert main([*args, "--quiet", "--eval-samples", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "give the model as a Hugging Face folder, a .gguf or zoo:NAME" in err and len(err.splitlines()) == 1


def test_an_int8_lm_head_is_checked_against_the_reference_of_the_rounded_head(tmp_path, tiny_llama_artifact) -> None:
    """`--lm-head int8`: the library stores the head as codes; the check's reference rounds it the same way, so the
    library stays within its bound while both move away from ONNX Runtime's float head."""
    from qcompile.job_tvm_decoder import build_decoder_library
    from qcompile.runtime.sessions import make_session

    artifact = tiny_llama_artifact("w4a8")
    ids = np.random.default_rng(2).integers(0, 64, 12)
    library, report = build_decoder_library(
        "llvm", artifact, tmp_path, make_session(str(artifact), threads=2), ids, 64, 2, lambda _: None, "int8"
    )
    assert report["head_dtype"] == "int8" and json.loads((tmp_path / "decoder.tvm.json").read_text())["head_dtype"]
    check = report["check"]
    assert check["within_reference"] and check["reference_rel_rms_diff"] > 0  # the rounded head moves the logits
    assert check["rel_rms_diff"] <= 2 * check["reference_rel_rms_diff"] + 1e-3  # … and the library as much (no slack)


def test_lm_head_without_a_target_is_refused(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["zoo:tiny-llama", "--passes", "w4a8", "--lm-head", "int8", "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--lm-head int8 sets how a TVM decoder library stores the LM head: add --target llvm" in err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_lm_head_on_an_encoder_is_refused(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    args = ["zoo:tiny", "--passes", "repq,intonly", "--target", "llvm", "--lm-head", "float16", "-o", str(out)]
    assert main([*args, "--quiet", "--no-baselines", "--eval-samples", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--lm-head float16 sets how a decoder LLM's TVM library stores its LM head" in err
    assert len(err.splitlines()) == 1 and (not out.exists() or not any(out.iterdir()))
