"""The KV-cache decoder export (prefill = no-cache logits, decode = the next position), greedy generation
through the cache, and `qcompile generate` on a run's output folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qcompile import runtime
from qcompile.cli import main
from qcompile.frontends.onnx import load
from qcompile.generation import generation_agreement, greedy_tokens
from qcompile.testing.tiny_llama import VOCAB, save_byte_tokenizer, tiny_llama_module
from qcompile.zoo.lm_export import kv_cache_of, prefill_feeds

RTOL = 1e-5  # ORT float32 against PyTorch float32 on the same weights, relative to max |logits|


@pytest.fixture(scope="module")
def decoder(tiny_llama_export):
    path = tiny_llama_export("pow2")
    return path, runtime.make_session(path)


def _ids(length: int, seed: int = 4, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, length)).astype(np.int64)


def test_the_export_declares_its_cache(decoder) -> None:
    path, session = decoder
    kv = kv_cache_of(load(path))
    assert (kv.layers, kv.heads, kv.head_dim) == (2, 2, 16)
    assert [i.name for i in session.get_inputs()][0] == "input_ids"
    assert {i.name for i in session.get_inputs()} == {"input_ids", *kv.inputs()}
    assert {o.name for o in session.get_outputs()} == {"logits", *kv.outputs()}


def test_prefill_with_an_empty_past_gives_the_logits_without_a_cache(decoder) -> None:
    import torch

    path, session = decoder
    ids = _ids(12)
    logits = runtime.run(session, prefill_feeds(load(path), ids), ["logits"])["logits"]
    with torch.no_grad():
        expected = tiny_llama_module(0)(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()
    assert np.abs(logits - expected).max() <= RTOL * np.abs(expected).max()


def test_one_decode_step_gives_the_next_positions_logits(decoder) -> None:
    path, session = decoder
    kv = kv_cache_of(load(path))
    ids = _ids(10)
    names = ["logits", *kv.outputs()]
    prefill = dict(zip(names, session.run(names, prefill_feeds(load(path), ids[:, :9]))))
    assert prefill["present.0.key"].shape == (2, 2, 9, 16)
    step = dict(zip(names, session.run(names, {"input_ids": ids[:, 9:], **kv.feeds_from(prefill)})))
    full = runtime.run(session, prefill_feeds(load(path), ids), ["logits"])["logits"]
    assert np.abs(step["logits"][:, 0] - full[:, 9]).max() <= RTOL * np.abs(full).max()
    assert step["present.1.value"].shape == (2, 2, 10, 16)


def test_greedy_generation_through_the_cache_equals_recomputing_every_prefix(decoder) -> None:
    path, session = decoder
    model = load(path)
    prompt = _ids(6, seed=8, batch=1)[0].tolist()
    tokens = greedy_tokens(session, prompt, 10)
    recomputed, ids = [], list(prompt)
    for _ in range(10):
        logits = runtime.run(session, prefill_feeds(model, np.array([ids])), ["logits"])["logits"]
        recomputed.append(int(np.argmax(logits[0, -1])))
        ids.append(recomputed[-1])
    assert tokens == recomputed
    assert generation_agreement(tokens, recomputed) == 1.0
    assert generation_agreement(tokens, tokens[:5]) == 0.5


def test_greedy_generation_stops_at_an_end_token(decoder) -> None:
    _, session = decoder
    prompt = _ids(6, seed=8, batch=1)[0].tolist()
    first = greedy_tokens(session, prompt, 10)
    assert greedy_tokens(session, prompt, 10, eos_ids=[first[2]]) == first[:3]


def test_the_cli_generates_with_a_runs_artifact_and_tokenizer(tmp_path: Path, isolated_cache: Path, capsys) -> None:
    out = tmp_path / "out"
    run = ["zoo:tiny-llama", "--passes", "w8a8", "-o", str(out), "--eval-samples", "2", "--quiet", "--no-baselines"]
    assert main(run) == 0
    report = json.loads((out / "report.json").read_text())
    assert len(report["generations"]) == 2 and set(report["generations"][0]["outputs"]) == {"ort_fp32", "qcompile"}
    assert 0.0 <= report["generations"][0]["agreement"]["qcompile"] <= 1.0
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "ab"]) == 2  # a random-token task saves no tokenizer
    assert "no tokenizer.json" in capsys.readouterr().err
    save_byte_tokenizer(out)
    assert main(["generate", str(out), "--prompt", "hello", "--no-chat-template", "--max-new-tokens", "5"]) == 0
    printed = capsys.readouterr().out
    assert printed.endswith("\n") and len(printed) > 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "/nonexistent-folder", "--prompt", "x"], "not a qcompile output folder"),
        (["generate", "/tmp"], "--prompt"),
        (["generate", "/nonexistent-folder", "--prompt", "x", "--threads", "0"], "--threads"),
    ],
)
def test_generate_errors_are_one_line(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_hugging_face_folder_is_a_model_scored_on_lee(tmp_path: Path, lee_only_cache: Path, capsys) -> None:
    """MODEL = a transformers folder (config.json, safetensors, tokenizer): exported once with a KV cache,
    scored by perplexity on Lee's corpus tokenized with its own tokenizer, generation check included."""
    cache = lee_only_cache
    folder = tmp_path / "tiny-hf"
    tiny_llama_module(0).save_pretrained(str(folder))
    save_byte_tokenizer(folder)
    out = tmp_path / "out"
    args = [
        str(folder),
        "--passes",
        "w8a8",
        "-o",
        str(out),
        "--eval-samples",
        "2",
        "--calib-samples",
        "4",
        "--quiet",
        "--no-baselines",
    ]
    assert main(args) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["decoder_llm"] is True and report["metric"]["name"] == "perplexity"
    assert report["all_metrics"]["qcompile"]["tokens"] == 2 * 512
    assert report["per_pass"][0]["options"]["act_granularity"] == "token"  # w8a8 on a decoder
    assert len(report["generations"]) == 4 and (out / "tokenizer.json").is_file()
    assert len(list((cache / "models").iterdir())) == 1  # exported once into the cache
    assert main(args + ["--force"]) == 0  # the second run reuses the export
    assert len(list((cache / "models").iterdir())) == 1


def test_a_folder_without_config_is_still_refused(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path), "--passes", "w8a8", "-o", str(tmp_path / "out")]) == 2
    assert "is a directory, not an ONNX file" in capsys.readouterr().err


def test_a_gguf_file_is_loaded_through_its_folder_and_file_name(tmp_path: Path) -> None:
    from qcompile.zoo.hf_causal_lm import HfCausalLM, is_hf_source

    gguf = tmp_path / "model.Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    entry = HfCausalLM(gguf)
    assert is_hf_source(gguf) and entry.name == "hf:model.Q8_0.gguf"
    assert entry._pretrained_arguments() == (str(tmp_path.resolve()), {"gguf_file": "model.Q8_0.gguf"})
    key = entry.key()
    gguf.write_bytes(b"GGUF-changed")
    assert HfCausalLM(gguf).key() != key  # an edited model is exported again
    assert not is_hf_source(tmp_path / "model.onnx")
