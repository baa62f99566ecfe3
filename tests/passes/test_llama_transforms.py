"""rotate and smooth on Llama-family decoders (RMSNorm, bias-less linears, RoPE, GQA, SwiGLU, tied embeddings),
on tiny Llamas exported from transformers: hidden 64 (power-of-two Hadamards) and hidden 48 / FFN 96 (Paley
12 ⊗ 2^k)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from qcompile import runtime
from qcompile.frontends.onnx import load
from qcompile.ir.online_ops import DOMAIN, KRONECKER_ROTATE
from qcompile.ir.properties import Property, get_properties, set_properties
from qcompile.passes.transforms.residual_stream import find_norms, find_stream
from qcompile.passes.transforms.rotate import RotatePass
from qcompile.passes.transforms.untie import untie_transposed_weights
from qcompile.pipeline.context import CalibrationData
from qcompile.pipeline.run import run_passes
from qcompile.testing.tiny_llama import VOCAB
from qcompile.zoo.lm_export import prefill_feeds

RTOL = 1e-5  # float equivalence on the logits: max |after − before| ≤ RTOL · max |before| (float32)
SHAPES = ("pow2", "paley")  # conftest.TINY_LLAMA_SHAPES


@pytest.fixture(scope="module")
def exported(tiny_llama_export) -> dict[str, str]:
    return {shape: tiny_llama_export(shape) for shape in SHAPES}


def _ids(seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (2, 24)).astype(np.int64)


def _logits(model: ir.Model, ids: np.ndarray) -> np.ndarray:
    session = runtime.make_session(model)
    return runtime.run(session, prefill_feeds(model, ids), ["logits"])["logits"].astype(np.float64)


def _values(model: ir.Model, names: list[str], ids: np.ndarray) -> dict[str, np.ndarray]:
    session = runtime.make_session(runtime.with_outputs(model, names))
    return {k: v.astype(np.float64) for k, v in runtime.run(session, prefill_feeds(model, ids), names).items()}


def test_rms_norms_are_found_only_when_asked(exported):
    model = load(exported["pow2"])
    assert find_norms(model.graph) == []  # LayerNorm-only callers (intonly, repq) never see RMSNorms
    norms = find_norms(model.graph, rms=True)
    assert len(norms) == 5  # two per layer and the final one
    for norm in norms:
        assert norm.rms and norm.beta is None and norm.gamma.const_value.shape == (64,)
        assert norm.square.op_type == "Pow" and norm.square.inputs[0] is norm.input
        assert norm.div.op_type == "Mul" and norm.input in norm.div.inputs
        assert {n.op_type for n in norm.input_uses()} == {"Pow", "Mul"}
    gammas = [norm.gamma.const_value.numpy() for norm in norms]
    assert not np.allclose(gammas[0], 1.0) and not np.allclose(gammas[0], gammas[1])


def test_the_residual_stream_of_a_llama_runs_from_the_embedding_through_bias_less_writers(exported):
    model = load(exported["pow2"])
    stream = find_stream(model.graph)
    assert not isinstance(stream, str), stream
    assert stream.rms and stream.width == 64
    assert stream.origin.producer().op_type == "Gather"
    assert len(stream.writers) == 4  # o_proj and down_proj of two layers
    assert all(w.bias is None and w.weight.const_value.shape[1] == 64 for w in stream.writers)
    assert sorted(w.weight.const_value.shape[0] for w in stream.writers) == [64, 64, 128, 128]


def test_untie_gives_the_lm_head_its_own_transposed_table(exported):
    model = load(exported["pow2"])
    (gather,) = [n for n in model.graph if n.op_type == "Gather" and n.inputs[0].const_value is not None]
    table = gather.inputs[0].const_value.numpy()
    ids = _ids()
    before = _logits(model, ids)
    untied = untie_transposed_weights(model)
    assert len(untied) == 1
    head = next(n for n in model.graph if n.name == untied[0])
    np.testing.assert_array_equal(head.inputs[1].const_value.numpy(), table.T)
    assert head.inputs[1] is not gather.inputs[0] and not any(
        n.op_type == "Transpose" for n in model.graph if n.inputs and n.inputs[0] is gather.inputs[0]
    )
    np.testing.assert_array_equal(_logits(model, ids), before)


@pytest.mark.parametrize("shape", SHAPES)
def test_rotation_preserves_the_logits(exported, shape):
    model = load(exported[shape])
    ids = _ids()
    before = _logits(model, ids)
    result = RotatePass().call(model)
    after = _logits(result.model, ids)
    assert np.abs(after - before).max() <= RTOL * np.abs(before).max()

    residual = result.stats["residual"]
    assert residual["norm_kind"] == "rms"
    assert residual["origin"] == "folded into the embedding table"
    assert len(residual["untied"]) == 1 and residual["writers"] == 4
    assert set(residual["norms"].values()) == {"folded"}  # the final norm too: the untied head is a linear
    width = 64 if shape == "pow2" else 48
    assert residual["width"] == width and np.prod(residual["factors"]) == width
    sizes = sorted({o["size"] for o in result.stats["online"]})
    assert sizes == ([64, 128] if shape == "pow2" else [48, 96])
    if shape == "paley":
        assert 12 in residual["factors"]
        assert all(12 in o["factors"] for o in result.stats["online"])


def test_after_rotation_no_rms_gain_and_no_mean_removal_is_left(exported):
    model = load(exported["pow2"])
    result = RotatePass().call(model)
    norms = find_norms(result.model.graph, rms=True)
    assert len(norms) == 5 and all(n.gamma is None for n in norms)  # every γ was folded: weightless x / rms(x)
    assert not any(
        n.op_type in ("Sub", "Transpose") and n.inputs[0].const_value is not None for n in result.model.graph
    )
    rotates = [n for n in result.model.graph if n.op_type == KRONECKER_ROTATE and n.domain == DOMAIN]
    # online Hadamards before o_proj and down_proj, and on the cached keys and the queries of each layer;
    # the embedding is folded
    assert len(rotates) == 4 + 2 * 2
    assert result.stats["qk_online"]["sites"] == 2 and result.stats["qk_online"]["head_dim"] == [16]


def test_the_cache_holds_the_keys_rotated_per_head(exported):
    """present.i.key after rotate = present.i.key before · R over the head axis; values are untouched."""
    model = load(exported["pow2"])
    ids = _ids()
    names = ["present.0.key", "present.1.key", "present.0.value"]
    before = _values(model, names, ids)
    result = RotatePass(residual=False, online=False).call(model)
    after = _values(result.model, names, ids)
    rotate = next(n for n in result.model.graph if n.op_type == KRONECKER_ROTATE and "key" in n.name)
    a, b = (v.const_value.numpy().astype(np.float64) for v in rotate.inputs[1:3])
    r = np.kron(a, b)
    np.testing.assert_allclose(r @ r.T, np.eye(16), atol=1e-6)
    for name in names[:2]:
        np.testing.assert_allclose(after[name], before[name] @ r, atol=1e-4 * np.abs(before[name]).max())
        assert np.abs(after[name] - before[name]).max() > 1e-2 * np.abs(before[name]).max()
    np.testing.assert_allclose(after["present.0.value"], before["present.0.value"], rtol=1e-6, atol=1e-7)


def test_the_embedding_and_the_head_are_rotated_by_one_orthogonal_map(exported):
    """E' = E Q and W'_head = Qᵀ diag(γ_f) Eᵀ, so E' E'ᵀ = E Eᵀ and E' W'_head = E diag(γ_f) Eᵀ."""
    model = load(exported["pow2"])
    gather = next(n for n in model.graph if n.op_type == "Gather" and n.inputs[0].const_value is not None)
    table = gather.inputs[0].const_value.numpy().astype(np.float64)
    final_gamma = find_norms(model.graph, rms=True)[-1].gamma.const_value.numpy().astype(np.float64)
    result = RotatePass().call(model)
    rotated = gather.inputs[0].const_value.numpy().astype(np.float64)
    head = next(n for n in result.model.graph if n.outputs[0].name == "logits").inputs[1]
    head_weight = head.const_value.numpy().astype(np.float64)
    assert not np.allclose(rotated, table, atol=1e-3)
    np.testing.assert_allclose(rotated @ rotated.T, table @ table.T, atol=1e-5)
    np.testing.assert_allclose(rotated @ head_weight, table @ np.diag(final_gamma) @ table.T, atol=1e-5)


def test_the_down_projection_input_loses_its_outlier_channels(exported):
    """The online Hadamard before down_proj spreads the SwiGLU output's largest channel over all 128."""
    model = load(exported["pow2"])
    down = [w.matmul for w in find_stream(model.graph).writers if w.weight.const_value.shape[0] == 128][0]
    name = down.inputs[0].name
    ids = _ids()
    before = _values(model, [name], ids)[name]
    result = RotatePass(residual=False).call(model)
    rotated_input = down.inputs[0].name
    after = _values(result.model, [rotated_input], ids)[rotated_input]

    def peak_to_rms(x: np.ndarray) -> float:
        return float(np.max(np.abs(x)) / np.sqrt(np.mean(x**2)))

    np.testing.assert_allclose(np.sum(after**2, axis=-1), np.sum(before**2, axis=-1), rtol=1e-4)
    assert peak_to_rms(after) < peak_to_rms(before)


def test_smooth_folds_into_rms_norm_sites_and_keeps_the_logits(exported):
    """SmoothQuant on RMSNorm → q/k/v and RMSNorm → gate/up: γ ← γ / s, W ← diag(s) W (no β to divide)."""
    model = load(exported["pow2"])
    gammas = {n.name: n.gamma.const_value.numpy().copy() for n in find_norms(model.graph, rms=True)}
    ids = _ids()
    before = _logits(model, ids)
    calibration = CalibrationData.from_list([prefill_feeds(model, _ids(seed)) for seed in (10, 11)])
    records = run_passes(model, "calibrate,smooth-scales", calibration=calibration)
    stats = records[-1]["stats"]
    assert stats["folded"] == 4  # two sites per layer; the final norm feeds the tied head (no constant weight)
    assert list(stats["skipped"]) == [list(gammas)[-1]]
    assert records[-1]["max_rel_err"] <= RTOL
    after = _logits(model, ids)
    assert np.abs(after - before).max() <= RTOL * np.abs(before).max()
    changed = [
        n.name
        for n in find_norms(model.graph, rms=True)
        if not np.array_equal(n.gamma.const_value.numpy(), gammas[n.name])
    ]
    assert len(changed) == 4


def test_weightless_rms_norms_are_found_and_a_second_rotation_keeps_the_logits(exported):
    """After rotate the RMSNorms have no γ; find_norms(rms=True) finds them, and rotating such a model again
    (as a fresh model, without the ROTATED property) unrotates the final norm online and stays exact."""
    model = load(exported["pow2"])
    ids = _ids()
    before = _logits(model, ids)
    RotatePass().call(model)
    norms = find_norms(model.graph, rms=True)
    assert len(norms) == 5 and all(n.gamma is None and n.output is n.div.outputs[0] for n in norms)
    set_properties(model, get_properties(model) - {Property.ROTATED})
    result = RotatePass().call(model)
    assert set(result.stats["residual"]["norms"].values()) == {"unrotated online"}
    assert np.abs(_logits(result.model, ids) - before).max() <= 2 * RTOL * np.abs(before).max()
