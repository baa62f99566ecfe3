"""FlatQuant: Kronecker sizes, the trainable transform's algebra and fake quantizers against independent
references, site finding and the trained, folded pass on the tiny Llama (loss goes down, outputs equal in
reals, learned clip ratios reach `quantize`), option inheritance and errors."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx import helper

from qcompile import runtime
from qcompile.errors import InputError
from qcompile.frontends.onnx import load
from qcompile.ir import quant_meta
from qcompile.ir.online_ops import KRONECKER_AFFINE
from qcompile.math.hadamard import random_orthogonal
from qcompile.passes.transforms.flatquant import FlatQuantPass
from qcompile.passes.transforms.flatquant_sites import find_flat_sites, kronecker_split
from qcompile.passes.transforms.flatquant_train import (
    SiteTransform,
    fake_quant_tokens,
    fake_quant_weight,
    kron_apply,
)
from qcompile.passes.transforms.untie import untie_transposed_weights
from qcompile.pipeline.context import CalibrationData, PipelineContext
from qcompile.pipeline.registry import expand, parse_pass_list
from qcompile.pipeline.run import run_passes
from qcompile.testing.tiny_llama import VOCAB
from qcompile.zoo.lm_export import prefill_feeds

TOKEN_W4A4 = (
    "quantize:weight_bits=4:act_bits=4:act_granularity=token:act_symmetric=false:keep_head_float=true"
    ":act_matmuls=false:weight_search=mse"
)


# FlatQuant's get_decompose_dim sizes (METHODS.md §8.1) and the two SmolLM2 widths of the LLM issue
@pytest.mark.parametrize(
    "n, factors",
    [
        (4096, (64, 64)),
        (11008, (86, 128)),
        (14336, (112, 128)),
        (5120, (64, 80)),
        (13824, (108, 128)),
        (8192, (64, 128)),
        (28672, (128, 224)),
        (3584, (56, 64)),
        (18944, (128, 148)),
        (576, (24, 24)),
        (1536, (32, 48)),
    ],
)
def test_kronecker_split_reproduces_the_papers_sizes(n: int, factors: tuple[int, int]) -> None:
    assert kronecker_split(n) == factors


def test_kron_apply_is_the_dense_kronecker_product() -> None:
    rng = np.random.default_rng(0)
    a, b, x = rng.normal(size=(3, 3)), rng.normal(size=(5, 5)), rng.normal(size=(2, 7, 15))
    got = kron_apply(torch.from_numpy(x), torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(got, x @ np.kron(a, b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("ratio", [1.0, 0.75, 0.5])  # exact in float32, so both sides scale identically
def test_token_fake_quant_is_the_graphs_per_token_quantizer(symmetric: bool, ratio: float) -> None:
    x = (np.random.default_rng(1).standard_t(3, size=(64, 48)) + 0.3).astype(np.float32)
    x[3] = 0.0  # an all-zero row takes the minimum scale
    spec = quant_meta.QuantSpec.per_token(4, symmetric, ratio)
    got = fake_quant_tokens(torch.from_numpy(x), 4, symmetric, ratio).numpy()
    np.testing.assert_array_equal(got, spec.fake_quantize(x))


def test_weight_fake_quant_is_symmetric_per_output_channel() -> None:
    rng = np.random.default_rng(2)
    w = rng.normal(size=(16, 6)).astype(np.float32)  # [K, N]: output channels on axis 1
    ratios = np.linspace(0.6, 1.0, 6).astype(np.float32)
    got = fake_quant_weight(torch.from_numpy(w), 4, 0, torch.from_numpy(ratios)).numpy()
    expected = np.empty_like(w)
    for n in range(6):
        scale = max(np.abs(w[:, n]).max() * ratios[n] / 7, 1e-12)
        expected[:, n] = np.clip(np.rint(w[:, n] / scale), -8, 7) * scale
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    transposed = fake_quant_weight(torch.from_numpy(w.T.copy()), 4, 1, torch.from_numpy(ratios)).numpy()
    np.testing.assert_allclose(transposed, expected.T, rtol=1e-6, atol=1e-7)


def _perturbed_transform(seed: int) -> SiteTransform:
    """A transform away from its start: random orthogonal U, V and σ, c in [0.5, 2]."""
    rng = np.random.default_rng(seed)
    transform = SiteTransform(np.eye(4), np.eye(6), rng.uniform(0.5, 2, 24), [10, 7], 4, False, 4)
    with torch.no_grad():
        for i, factor in enumerate((transform.left, transform.right)):
            size = factor.sigma.shape[0]
            factor.u.weight = torch.as_tensor(random_orthogonal(size, seed + 10 * i), dtype=torch.float32)
            factor.v.weight = torch.as_tensor(random_orthogonal(size, seed + 10 * i + 1), dtype=torch.float32)
            factor.sigma.copy_(torch.as_tensor(rng.uniform(0.5, 2, size)))
    return transform


@pytest.mark.parametrize("in_axis", [0, 1])
def test_the_transform_pair_cancels_in_reals(in_axis: int) -> None:
    transform = _perturbed_transform(3)
    transform.quantize = False
    rng = np.random.default_rng(4)
    x = torch.as_tensor(rng.normal(size=(5, 24)), dtype=torch.float32)
    w = torch.as_tensor(rng.normal(size=(24, 10) if in_axis == 0 else (10, 24)), dtype=torch.float32)
    with torch.no_grad():
        moved_x = transform.activation(x)
        moved_w = transform.weight(w, in_axis, 0)
    reference = x @ (w if in_axis == 0 else w.T)
    got = moved_x @ (moved_w if in_axis == 0 else moved_w.T)
    np.testing.assert_allclose(got.numpy(), reference.numpy(), rtol=0, atol=1e-4 * float(reference.abs().max()))
    a, b, a_inv, b_inv, _ = transform.factors64()
    np.testing.assert_allclose(np.kron(a, b) @ np.kron(a_inv, b_inv), np.eye(24), atol=1e-5)


def test_sites_of_a_llama_layer_and_where_their_scales_fold(tiny_llama_export) -> None:
    model = load(tiny_llama_export("pow2"))
    sites, skipped = find_flat_sites(model.graph)
    # per layer: input norm → q/k/v, attention output → o_proj, post-attention norm → gate/up, SwiGLU → down
    assert [len(s.linears) for s in sites] == [3, 1, 2, 1] * 2
    assert [s.fold for s in sites] == ["gamma", "online", "gamma", "linear"] * 2
    assert [s.channels for s in sites] == [64, 64, 64, 128] * 2
    assert not skipped  # the tied LM head reads Transpose(embedding), not a constant: no candidate
    untie_transposed_weights(model)
    sites, skipped = find_flat_sites(model.graph)
    assert len(sites) == 8
    (head_input,) = skipped
    assert "head" in skipped[head_input]


def _calibration(model: ir.Model, batches: int = 3, seed: int = 5) -> CalibrationData:
    rng = np.random.default_rng(seed)
    return CalibrationData.from_list(
        [prefill_feeds(model, rng.integers(0, VOCAB, (2, 32)).astype(np.int64)) for _ in range(batches)]
    )


def test_flatquant_trains_folds_exactly_and_hands_its_clip_ratios_to_quantize(tiny_llama_export) -> None:
    model = load(tiny_llama_export("pow2"))
    float_model = load(tiny_llama_export("pow2"))
    steps = "flatquant:samples=6:batch=2:epochs=8:lr=0.02:kv_bits=4," + TOKEN_W4A4
    records = run_passes(model, steps, calibration=_calibration(model))
    flat, quantize = records[0], records[1]
    assert flat["max_rel_err"] <= 1e-4  # the pipeline's EXACT_IN_REALS check ran on the folded model
    curves = [s["layer_curve"] for s in flat["stats"]["sites"] if "layer_curve" in s]
    assert len(curves) == 2
    for curve in curves:  # [before training, epoch means…, after training]: the layer's quantized MSE drops
        assert curve[-1] < 0.95 * curve[0]
    transforms = [n for n in model.graph if n.op_type == KRONECKER_AFFINE]
    assert len(transforms) == 8
    learned = {s["site"]: s["act_clip_ratio"] for s in flat["stats"]["sites"]}
    used = quantize["stats"]["learned_act_clip_ratios"]
    assert len(used) == 8
    for node in transforms:
        value = node.outputs[0]
        assert all(use.node.op_type == "MatMul" for use in value.uses())
        spec = quant_meta.get_quant(value)
        assert spec is not None and spec.clip_ratio == pytest.approx(used[value.name])
    assert sorted(round(v, 4) for v in used.values()) == sorted(learned.values())

    # held-out tokens: the float model with only the transforms folded in equals the original
    transformed = load(tiny_llama_export("pow2"))
    run_passes(transformed, "flatquant:samples=6:batch=2:epochs=2", calibration=_calibration(transformed))
    feeds = prefill_feeds(float_model, np.random.default_rng(9).integers(0, VOCAB, (2, 20)).astype(np.int64))
    reference = runtime.run(runtime.make_session(float_model), feeds, ["logits"])["logits"]
    got = runtime.run(runtime.make_session(transformed), feeds, ["logits"])["logits"]
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-4 * np.abs(reference).max())


def test_bit_widths_symmetry_and_kv_bits_come_from_the_steps_that_follow() -> None:
    def flat_options(text: str) -> dict:
        return next(s.options for s in expand(parse_pass_list(text), True) if s.name == "flatquant")

    assert flat_options("flatquant,w4a4kv4") == {"act_bits": 4, "weight_bits": 4, "act_symmetric": False, "kv_bits": 4}
    w4a8 = flat_options("flatquant,w4a8")
    assert w4a8["act_bits"] == 8 and w4a8["weight_bits"] == 4 and "kv_bits" not in w4a8
    assert FlatQuantPass(**w4a8).act_symmetric is True  # w4a8's per-token activations are symmetric
    assert flat_options("flatquant:act_bits=6,w4a4")["act_bits"] == 6


def test_errors_are_clear(tiny_llama_export) -> None:
    model = load(tiny_llama_export("pow2"))
    with pytest.raises(InputError, match="calibration data"):
        FlatQuantPass(context=PipelineContext())(model)
    for options in ({"init": "eye"}, {"act_clip": "search"}, {"kv_bits": 5}, {"act_bits": 1}, {"lr": 0.0}):
        with pytest.raises(ValueError):
            FlatQuantPass(**options)
    F = onnx.TensorProto.FLOAT
    w = onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", F, [1, 4])],
        [helper.make_tensor_value_info("y", F, [1, 4])],
        [w],
    )
    plain = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    calibration = CalibrationData.from_list([{"x": np.ones((1, 4), np.float32)}])
    with pytest.raises(InputError, match="residual stream"):
        FlatQuantPass(context=PipelineContext(calibration=calibration))(plain)


def test_lac_starts_where_quantizes_clip_search_puts_the_initial_transform(tiny_llama_export) -> None:
    """epochs=0: each learned ratio is the search's ratio (capped at 0.99) on the transformed activations,
    the same choice `quantize:act_clip_ratio=search` makes on the folded model with the same rows."""
    learned_model = load(tiny_llama_export("pow2"))
    steps = "flatquant:samples=6:batch=2:epochs=0," + TOKEN_W4A4  # (asymmetric A4, inherited)
    records = run_passes(learned_model, steps, calibration=_calibration(learned_model))
    learned = {s["site"]: s["act_clip_ratio"] for s in records[0]["stats"]["sites"]}
    searched_model = load(tiny_llama_export("pow2"))
    steps = "flatquant:samples=6:batch=2:epochs=0:act_clip=none," + TOKEN_W4A4 + ":act_clip_ratio=search"
    records = run_passes(searched_model, steps, calibration=_calibration(searched_model))
    searched = records[1]["stats"]["act_clip_ratios"]
    assert len(searched) == len(learned) == 8
    by_site = {name.removesuffix("_flat_transformed"): ratio for name, ratio in searched.items()}
    assert {site: round(min(by_site[site], 0.99), 4) for site in learned} == learned


def test_layers_limits_training_to_the_first_layers(tiny_llama_export) -> None:
    model = load(tiny_llama_export("pow2"))
    records = run_passes(model, "flatquant:samples=4:batch=2:epochs=1:layers=1", calibration=_calibration(model))
    stats = records[0]["stats"]
    assert len(stats["sites"]) == 4 and sum("layer_curve" in s for s in stats["sites"]) == 1
    assert sum("not in a trained layer" in reason for reason in stats["skipped"].values()) == 4
    assert sum(n.op_type == KRONECKER_AFFINE for n in model.graph) == 4
    with pytest.raises(ValueError):
        FlatQuantPass(layers=-1)
