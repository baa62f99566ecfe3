"""prune-layers and linear-patch on a 6-layer tiny Llama, against references computed with transformers itself:
the block choice equals a brute-force cosine search over the module's layer inputs, the pruned graph equals the
module with those layers deleted, the patch equals H·diag(s)·Hᵀ from the module's states and the patched graph
equals the module with that matrix applied in a hook; the KV cache of a pruned artifact still decodes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
import torch

from qcompile import runtime
from qcompile.cli import main
from qcompile.errors import InputError
from qcompile.frontends.onnx import load
from qcompile.math.hadamard import hadamard_matrix
from qcompile.passes.transforms.linear_patch import LinearPatchPass
from qcompile.passes.transforms.prune_layers import METADATA_KEY, PruneLayersPass, choose_start
from qcompile.pipeline.context import CalibrationData, PipelineContext
from qcompile.pipeline.run import run_passes
from qcompile.testing.tiny_llama import VOCAB, save_byte_tokenizer, tiny_llama_module
from qcompile.zoo.lm_export import kv_cache_of_session, prefill_feeds

LAYERS = 6


def _ids(seed: int, batch: int = 2, tokens: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, tokens)).astype(np.int64)


CALIBRATION_IDS = [_ids(seed) for seed in (11, 12, 13)]


def _calibration(model: ir.Model) -> CalibrationData:
    return CalibrationData.from_list([prefill_feeds(model, ids) for ids in CALIBRATION_IDS])


def _module():
    return tiny_llama_module(0, num_hidden_layers=LAYERS)


def _layer_inputs(module) -> list[np.ndarray]:
    """x_0 … x_L of the calibration tokens, [tokens, d] each, captured by hooks on the module itself."""
    captured: dict[int, list[torch.Tensor]] = {j: [] for j in range(LAYERS + 1)}
    targets = [*module.model.layers, module.model.norm]

    def hook(index):
        def capture(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            captured[index].append(hidden.detach().reshape(-1, hidden.shape[-1]))

        return capture

    handles = [t.register_forward_pre_hook(hook(j), with_kwargs=True) for j, t in enumerate(targets)]
    with torch.no_grad():
        for ids in CALIBRATION_IDS:
            module(input_ids=torch.from_numpy(ids), use_cache=False)
    for handle in handles:
        handle.remove()
    return [torch.cat(captured[j]).double().numpy() for j in range(LAYERS + 1)]


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def _torch_logits(module, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()


def _graph_logits(model: ir.Model, ids: np.ndarray) -> np.ndarray:
    session = runtime.make_session(model)
    return runtime.run(session, prefill_feeds(model, ids), ["logits"])["logits"]


def _without_layers(module, start: int, count: int):
    kept = [layer for j, layer in enumerate(module.model.layers) if not start <= j < start + count]
    module.model.layers = torch.nn.ModuleList(kept)
    return module


@pytest.mark.parametrize("count", [1, 2, 3])
def test_block_choice_is_the_brute_force_cosine_search(tiny_llama_export, count: int) -> None:
    states = _layer_inputs(_module())
    brute = {i: _mean_cosine(states[i], states[i + count]) for i in range(1, LAYERS - count)}
    model = load(tiny_llama_export("deep"))
    (record,) = run_passes(model, f"prune-layers:n={count}", calibration=_calibration(model))
    stats = record["stats"]
    assert stats["removed"] == list(range(max(brute, key=brute.get), max(brute, key=brute.get) + count))
    assert set(stats["cosine_by_start"]) == set(brute)  # starts 1 … L − K − 1: first and last layer kept
    for start, cosine in stats["cosine_by_start"].items():
        assert cosine == pytest.approx(brute[start], abs=1e-5)
    assert stats["windows"] == 6 and stats["tokens"] == 6 * 24


def test_choose_start_keeps_first_and_last_and_breaks_ties_early() -> None:
    cosine = np.zeros((7, 7))
    cosine[0, 2] = cosine[4, 6] = 1.0  # the first and the last layer would be the best spans: never chosen
    cosine[1, 3] = cosine[3, 5] = 0.5
    start, scores = choose_start(cosine, 2)
    assert start == 1 and sorted(scores) == [1, 2, 3]
    with pytest.raises(InputError, match="first and the last"):
        choose_start(cosine, 5)


def test_pruned_graph_is_the_module_without_those_layers(tiny_llama_export) -> None:
    model = load(tiny_llama_export("deep"))
    (record,) = run_passes(model, "prune-layers:n=2:start=2", calibration=_calibration(model))
    stats = record["stats"]
    assert stats["removed"] == [2, 3]
    module = _module()
    per_layer = sum(p.numel() for p in module.model.layers[0].parameters())
    assert stats["parameters_before"] - stats["parameters_after"] == 2 * per_layer
    assert sorted(stats["inputs_removed"]) == sorted(
        f"past_key_values.{j}.{k}" for j in (2, 3) for k in ("key", "value")
    )
    assert sorted(stats["outputs_removed"]) == sorted(f"present.{j}.{k}" for j in (2, 3) for k in ("key", "value"))
    assert model.metadata_props[METADATA_KEY] == '{"start": 2, "count": 2, "layers": 6}'
    ids = _ids(21)
    reference = _torch_logits(_without_layers(module, 2, 2), ids)
    np.testing.assert_allclose(_graph_logits(model, ids), reference, rtol=0, atol=1e-4 * np.abs(reference).max())


def test_a_pruned_artifact_still_decodes_with_its_kv_cache(tiny_llama_export) -> None:
    model = load(tiny_llama_export("deep"))
    run_passes(model, "prune-layers:n=3,linear-patch", calibration=_calibration(model))
    session = runtime.make_session(model)
    kv = kv_cache_of_session(session)
    assert len(kv.entries) == 2 * (LAYERS - 3)
    ids = _ids(31, batch=1, tokens=10)
    whole = runtime.run(session, {"input_ids": ids, **kv.empty(1)})["logits"]
    first = runtime.run(session, {"input_ids": ids[:, :9], **kv.empty(1)})
    step = runtime.run(session, {"input_ids": ids[:, 9:], **kv.feeds_from(first)})["logits"]
    np.testing.assert_allclose(step[:, -1], whole[:, -1], rtol=0, atol=1e-4 * np.abs(whole).max())


@pytest.mark.parametrize("rotation", ["hadamard", "none"])
def test_patch_is_h_diag_s_ht_from_the_unpruned_states(tiny_llama_export, rotation: str) -> None:
    module = _module()
    states = _layer_inputs(module)
    model = load(tiny_llama_export("deep"))
    records = run_passes(model, f"prune-layers:n=2,linear-patch:rotation={rotation}", calibration=_calibration(model))
    start = records[0]["stats"]["removed"][0]
    d = states[0].shape[1]
    h = hadamard_matrix(d) / np.sqrt(d) if rotation == "hadamard" else np.eye(d)
    s = np.abs(states[start + 2] @ h).mean(axis=0) / np.abs(states[start] @ h).mean(axis=0)
    expected = h @ np.diag(s) @ h.T
    (node,) = [n for n in model.graph if n.name.startswith("linear_patch")]
    patch = node.inputs[1].const_value.numpy()
    np.testing.assert_allclose(patch, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(patch, patch.T, rtol=0, atol=1e-7)
    assert records[1]["stats"]["parameters"] == d * d

    # the patched graph is the pruned module with x ← x·P on the hidden state entering the first kept layer
    pruned = _without_layers(module, start, 2)
    weight = torch.from_numpy(patch.astype(np.float32))

    def multiply(_module, args, kwargs):
        if args:
            return (args[0] @ weight, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] @ weight}

    pruned.model.layers[start].register_forward_pre_hook(multiply, with_kwargs=True)
    ids = _ids(41)
    reference = _torch_logits(pruned, ids)
    np.testing.assert_allclose(_graph_logits(model, ids), reference, rtol=0, atol=1e-4 * np.abs(reference).max())


def test_errors_are_clear(tiny_llama_export) -> None:
    model = load(tiny_llama_export("deep"))
    with pytest.raises(InputError, match="right after 'prune-layers"):
        LinearPatchPass()(model)
    with pytest.raises(InputError, match="calibration data"):
        PruneLayersPass(n=2, context=PipelineContext())(model)
    context = PipelineContext(calibration=_calibration(model))
    with pytest.raises(InputError, match="first and the last"):
        PruneLayersPass(n=5, context=context)(model)
    with pytest.raises(InputError, match="start=4 is not one of 1 … 3"):
        PruneLayersPass(n=2, start=4, context=context)(model)
    for options in ({"n": 0}, {"n": 2, "samples": 0}):
        with pytest.raises(ValueError):
            PruneLayersPass(**options)
    with pytest.raises(ValueError):
        LinearPatchPass(rotation="diag")
    PruneLayersPass(n=1, context=context)(model)
    with pytest.raises(InputError, match="already pruned"):
        PruneLayersPass(n=1, context=context)(model)
    quantized = load(tiny_llama_export("deep"))
    run_passes(quantized, "w8a8", calibration=_calibration(quantized))
    with pytest.raises(InputError, match="before quantization"):
        PruneLayersPass(n=1, context=context)(quantized)


def test_the_cli_prunes_patches_quantizes_and_generates(tmp_path: Path, lee_only_cache: Path, capsys) -> None:
    """The whole job on a 6-layer Hugging Face folder: prune-layers, linear-patch and w8a8 in one artifact that
    is scored, reports its pruned layers and generates through its shorter KV cache."""
    folder = tmp_path / "tiny-hf"
    _module().save_pretrained(str(folder))
    save_byte_tokenizer(folder)
    out = tmp_path / "out"
    passes = "prune-layers:n=2,linear-patch,w8a8"
    argv = [str(folder), "--passes", passes, "-o", str(out), "--eval-samples", "2", "--calib-samples", "4"]
    assert main([*argv, "--quiet", "--no-baselines"]) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    by_name = {record["name"]: record for record in report["per_pass"]}
    assert by_name["prune-layers"]["stats"]["windows"] == 4 and len(by_name["prune-layers"]["stats"]["removed"]) == 2
    assert by_name["linear-patch"]["stats"]["parameters"] == 64 * 64
    assert len(report["generations"]) == 4 and report["all_metrics"]["qcompile"]["tokens"] == 2 * 512
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "hello", "--no-chat-template", "--max-new-tokens", "4"]) == 0
    assert len(capsys.readouterr().out) > 1
