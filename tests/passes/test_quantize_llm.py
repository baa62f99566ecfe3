"""Tests of the quantize pass's decoder-LLM options (act_granularity, weight_group, weight_symmetric) and the
w8a8tok / w4a16 recipes, on a MatMul chain with K = 256 and through the CLI on zoo:tiny.

The end-to-end checks compare ONNX Runtime's execution of the QDQ model with a NumPy reference of the chain
written here from the algebra (per-token in float32, groups in float64), docs/methods/per-token.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompile
from qcompile import PipelineContext, runtime
from qcompile.cli import main
from qcompile.errors import InputError
from qcompile.ir import quant_meta
from qcompile.ir.properties import Property, get_properties
from qcompile.passes.quantize.uniform import QuantizeUniformPass
from qcompile.pipeline.context import CalibrationData
from qcompile.runtime.qdq import to_qdq

K, HIDDEN, N, TOKENS = 256, 256, 64, 12
TINY = np.float32(1e-12)


def _chain(k: int = K, seed: int = 0) -> tuple[ir.Model, dict[str, np.ndarray]]:
    """x[b, T, k] → MatMul w1[k, 256] → Relu → MatMul w2[256, 64] → y."""
    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.normal(0, 1 / np.sqrt(k), (k, HIDDEN)).astype(np.float32),
        "w2": rng.normal(0, 1 / np.sqrt(HIDDEN), (HIDDEN, N)).astype(np.float32),
    }
    weights["w1"][7, 3] = 2.0  # one outlier weight in one group
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node("Relu", ["h"], ["a"], name="relu"),
            helper.make_node("MatMul", ["a", "w2"], ["y"], name="fc2"),
        ],
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "tokens", N])],
        [numpy_helper.from_array(w, name) for name, w in weights.items()],
    )
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    return model, weights


def _batches(k: int = K, count: int = 3, seed: int = 1) -> list[dict[str, np.ndarray]]:
    """Token batches with outlier tokens (LLM-like: a few tokens carry much larger activations)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        x = rng.normal(0, 1, (2, TOKENS, k)).astype(np.float32)
        x[0, 0] *= 40.0  # an outlier token (the "attention sink")
        x[1, 3, :5] = 200.0
        x[1, 4] = 0.0  # an all-zero token
        out.append({"x": x})
    return out


def ref_token(x: np.ndarray, bits: int = 8) -> np.ndarray:
    """Symmetric per-token fake quantization (float32, half to even)."""
    top = np.float32(2 ** (bits - 1) - 1)
    s = np.maximum(np.abs(x).max(axis=-1, keepdims=True) / top, TINY)
    return (np.clip(np.rint(x / s), -top, top) * s).astype(np.float32)


def ref_channel(w: np.ndarray, bits: int) -> np.ndarray:
    top = 2 ** (bits - 1) - 1
    s = np.maximum(np.abs(w.astype(np.float64)).max(axis=0) / top, 1e-12).astype(np.float32).astype(np.float64)
    return (np.clip(np.rint(w / s), -top, top) * s).astype(np.float32)


def ref_group_asym(w: np.ndarray, group: int, bits: int) -> np.ndarray:
    k, n = w.shape
    g = w.astype(np.float64).reshape(k // group, group, n)
    levels = 2**bits - 1
    lo, hi = np.minimum(g.min(axis=1), 0.0), np.maximum(g.max(axis=1), 0.0)
    s64 = np.maximum((hi - lo) / levels, 1e-12)
    z = np.repeat(np.clip(np.rint(-lo / s64), 0, levels), group, axis=0)
    s = np.repeat(s64.astype(np.float32), group, axis=0).astype(np.float64)
    q = np.clip(np.rint(w / s) + z, 0, levels)
    return ((q - z) * s).astype(np.float32)


def _run(model: ir.Model, feeds: dict[str, np.ndarray], outputs: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    session = runtime.make_session(runtime.with_outputs(model, list(outputs)), optimize=False)
    return runtime.run(session, feeds, ["y", *outputs])


def _sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    reference, test = reference.astype(np.float64), test.astype(np.float64)
    return float(10.0 * np.log10(np.sum(reference**2) / np.sum((reference - test) ** 2)))


def _float_y(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ weights["w1"], 0) @ weights["w2"]


def test_per_token_activations_through_run_passes_match_numpy_and_get_checked() -> None:
    model, weights = _chain()
    batches = _batches()
    records = qcompile.run_passes(
        model, "calibrate,quantize:act_granularity=token", calibration=CalibrationData.from_list(batches)
    )
    specs = {v.name: quant_meta.get_quant(v) for v in quant_meta.quantized_values(model.graph)}
    assert specs["x"].kind == specs["a"].kind == "uniform_token"
    assert specs["x"].signed and specs["x"].bits == 8
    assert specs["w1"].axis == 1 and specs["w1"].group_size is None  # weights unchanged: per channel
    quantize = records[-1]
    assert quantize["stats"]["activations"] == 2
    assert np.isfinite(quantize["sqnr_db"]) and quantize["sqnr_db"] > 25  # CheckNumerics ran the QDQ model
    assert len(quantize["per_layer"]) == 2
    x = batches[0]["x"]
    out = _run(to_qdq(model), {"x": x}, ("x_dequantized", "a_dequantized", "h"))
    np.testing.assert_allclose(out["x_dequantized"], ref_token(x), rtol=0, atol=0)
    # the second quantizer sees ORT's own h, so compare it on that
    np.testing.assert_allclose(out["a_dequantized"], ref_token(np.maximum(out["h"], 0)), rtol=0, atol=0)
    w1, w2 = ref_channel(weights["w1"], 8), ref_channel(weights["w2"], 8)
    h = ref_token(x) @ w1
    np.testing.assert_allclose(out["h"], h, rtol=1e-5, atol=1e-5 * float(np.abs(h).max()))
    expected = out["a_dequantized"] @ w2
    np.testing.assert_allclose(out["y"], expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))


def test_per_token_needs_no_calibration_and_beats_per_tensor_on_outlier_tokens() -> None:
    batches = _batches()
    calibration = CalibrationData.from_list(batches)
    token, weights = _chain()
    qcompile.run_passes(token, "quantize:act_granularity=token", calibration=calibration)
    assert Property.QUANTIZED in get_properties(token) and Property.CALIBRATED not in get_properties(token)
    tensor, _ = _chain()
    qcompile.run_passes(tensor, "calibrate,quantize", calibration=calibration)
    x = _batches(seed=9)[0]["x"]
    reference = _float_y(weights, x)
    token_db = _sqnr_db(reference, _run(to_qdq(token), {"x": x})["y"])
    tensor_db = _sqnr_db(reference, _run(to_qdq(tensor), {"x": x})["y"])
    assert token_db > tensor_db + 6  # outlier tokens no longer set everyone's step


def test_the_per_tensor_default_still_requires_calibration() -> None:
    model, _ = _chain()
    with pytest.raises(InputError, match="CALIBRATED|calibrat"):
        qcompile.run_passes(model, "quantize", calibration=CalibrationData.from_list(_batches()))


@pytest.mark.parametrize("symmetric", [True, False])
def test_weight_groups_of_128_follow_the_reduction_axis_and_match_numpy(symmetric: bool) -> None:
    model, weights = _chain()
    passes = f"quantize:weight_bits=4:weight_group=128:weight_symmetric={symmetric}:act_granularity=none"
    records = qcompile.run_passes(model, passes, calibration=CalibrationData.from_list(_batches()))
    spec = quant_meta.get_quant(model.graph.initializers["w1"])
    assert spec.group_size == 128 and spec.axis == 0 and spec.scale.shape == (K // 128, HIDDEN)
    assert spec.signed is False  # uint8 container: symmetric with zero point 8, or asymmetric
    assert records[-1]["stats"]["activations"] == 0 and records[-1]["stats"]["kept_float"] == 2
    assert quant_meta.get_quant(model.graph.inputs[0]) is None
    x = _batches(seed=5)[0]["x"]
    out = _run(to_qdq(model), {"x": x}, ("w1_dequantized", "w2_dequantized"))
    for name in ("w1", "w2"):
        if symmetric:
            grouped = weights[name].reshape(-1, 128, weights[name].shape[1])
            expected = np.concatenate([ref_channel(g, 4) for g in grouped])
        else:
            expected = ref_group_asym(weights[name], 128, 4)
        np.testing.assert_allclose(out[f"{name}_dequantized"], expected, rtol=0, atol=0)


def test_weight_groups_are_finer_than_per_channel_at_4_bits() -> None:
    calibration = CalibrationData.from_list(_batches())
    scores = {}
    for label, passes in (
        ("channel", "quantize:weight_bits=4:act_granularity=none"),
        ("g128 sym", "quantize:weight_bits=4:weight_group=128:act_granularity=none"),
        ("g128", "quantize:weight_bits=4:weight_group=128:weight_symmetric=false:act_granularity=none"),
        ("g32", "quantize:weight_bits=4:weight_group=32:weight_symmetric=false:act_granularity=none"),
    ):
        model, weights = _chain()
        qcompile.run_passes(model, passes, calibration=calibration)
        out = _run(to_qdq(model), _batches(seed=5)[0], ("w1_dequantized", "w2_dequantized"))
        scores[label] = min(_sqnr_db(w, out[f"{name}_dequantized"]) for name, w in weights.items())
    # weight SQNR (the output's is dominated by how the outlier tokens meet a few rows' errors)
    assert scores["channel"] < scores["g128 sym"] < scores["g128"] < scores["g32"]


@pytest.mark.parametrize("symmetric", [True, False])
def test_a_ragged_last_group_quantizes_its_own_channels_and_exports_exactly(symmetric: bool) -> None:
    """K = 200 in groups of 128: groups [0, 128) and [128, 200); the QDQ form pads and cuts the last one."""
    model, weights = _chain(k=200)
    passes = f"quantize:weight_bits=4:weight_group=128:weight_symmetric={symmetric}:act_granularity=none"
    qcompile.run_passes(model, passes, calibration=None)
    spec = quant_meta.get_quant(model.graph.initializers["w1"])
    assert spec.group_size == 128 and spec.scale.shape == (2, HIDDEN)
    w = weights["w1"]
    parts = (w[:128], w[128:])
    if symmetric:
        expected = np.concatenate([ref_channel(p, 4) for p in parts])
    else:
        expected = np.concatenate([ref_group_asym(p, len(p), 4) for p in parts])
    np.testing.assert_array_equal(spec.fake_quantize(w), expected)
    qdq = to_qdq(model)
    assert any(n.op_type == "Slice" for n in qdq.graph)
    x = np.random.default_rng(5).normal(0, 1, (2, TOKENS, 200)).astype(np.float32)
    out = _run(qdq, {"x": x}, ("w1_dequantized",))
    np.testing.assert_array_equal(out["w1_dequantized"], expected)
    np.testing.assert_allclose(
        out["y"],
        np.maximum(x @ expected, 0) @ quant_meta.get_quant(model.graph.initializers["w2"]).fake_quantize(weights["w2"]),
        rtol=1e-5,
        atol=1e-5,
    )


def test_mse_clipped_asymmetric_groups_have_no_larger_error_than_min_max() -> None:
    from qcompile.passes.quantize.params import grouped_weight_spec

    weight = np.random.default_rng(3).standard_t(3, size=(200, 48)).astype(np.float32)  # heavy tails
    errors = {}
    for search in ("minmax", "mse"):
        spec = grouped_weight_spec(weight, axis=0, group_size=64, bits=4, symmetric=False, search=search)
        errors[search] = np.sum((spec.fake_quantize(weight).astype(np.float64) - weight) ** 2, axis=0)
    assert np.all(errors["mse"] <= errors["minmax"] + 1e-12) and errors["mse"].sum() < 0.99 * errors["minmax"].sum()


def test_a_reduction_axis_narrower_than_one_group_is_an_input_error_naming_the_node() -> None:
    model, _ = _chain(k=100)
    with pytest.raises(
        InputError, match=r"'w1' of node 'fc1' has 100 input channels, fewer than one group.*weight_group=128"
    ):
        qcompile.run_passes(model, "quantize:weight_group=128:act_granularity=none", calibration=None)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"weight_group": -1}, "weight_group"),
        ({"weight_symmetric": False}, "per-group"),
        ({"act_granularity": "row"}, "act_granularity"),
        ({"act_symmetric": True}, "act_symmetric"),
        ({"act_clip_ratio": 0.9}, "act_clip_ratio"),
        ({"act_granularity": "token", "act_clip_ratio": 0.0}, "act_clip_ratio"),
    ],
)
def test_inconsistent_options_are_rejected(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QuantizeUniformPass(**options)


def test_asymmetric_clipped_per_token_options_reach_the_spec() -> None:
    model, _ = _chain()
    qcompile.run_passes(
        model,
        "quantize:act_granularity=token:act_symmetric=false:act_clip_ratio=0.9:act_bits=6",
        calibration=CalibrationData.from_list(_batches()),
    )
    spec = quant_meta.get_quant(model.graph.inputs[0])
    assert (spec.kind, spec.signed, spec.bits, spec.clip_ratio) == ("uniform_token", False, 6, pytest.approx(0.9))


def test_searched_clip_ratios_are_per_site_and_match_the_search() -> None:
    from qcompile.calibration.token_clip import TokenClipSearch
    from qcompile.passes.quantize.token_clip_sites import channel_weights

    batches = _batches(count=2)
    model, weights = _chain()
    records = qcompile.run_passes(
        model,
        "quantize:act_granularity=token:act_bits=4:act_clip_ratio=search",
        calibration=CalibrationData.from_list(batches),
    )
    ratios = records[-1]["stats"]["act_clip_ratios"]
    assert set(ratios) == {"x", "a"}
    for node, name in (("fc1", "x"), ("fc2", "a")):
        assert quant_meta.get_quant(model.graph.node(node).inputs[0]).clip_ratio == pytest.approx(ratios[name])
    # site x: its channel weights are w1's squared entries summed over outputs; the search sees every row here
    g = (weights["w1"].astype(np.float64) ** 2).sum(axis=1)
    np.testing.assert_allclose(channel_weights(model.graph.inputs[0], ("MatMul",)), g, rtol=1e-12)
    reference = TokenClipSearch(4, True, g, rows_per_batch=10**6)
    for batch in batches:
        reference.update(batch["x"])
    assert ratios["x"] == reference.best()


def _heavy_tailed(seed: int, tokens: int = 256) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_t(4, (2, tokens, K)).astype(np.float32)}


def test_searched_clip_ratios_beat_no_clipping_on_held_out_heavy_tailed_tokens() -> None:
    calibration = CalibrationData.from_list([_heavy_tailed(1), _heavy_tailed(2)])
    searched, weights = _chain()
    records = qcompile.run_passes(
        searched, "quantize:act_granularity=token:act_bits=4:act_clip_ratio=search", calibration=calibration
    )
    assert records[-1]["stats"]["act_clip_ratios"]["x"] < 1.0
    unclipped, _ = _chain()
    qcompile.run_passes(unclipped, "quantize:act_granularity=token:act_bits=4", calibration=calibration)
    x = _heavy_tailed(9)["x"]
    y = _float_y(weights, x)
    searched_db = _sqnr_db(y, _run(to_qdq(searched), {"x": x})["y"])
    assert searched_db > _sqnr_db(y, _run(to_qdq(unclipped), {"x": x})["y"]) + 0.5


def test_a_clip_search_without_calibration_data_or_with_a_bad_word_is_refused() -> None:
    model, _ = _chain()
    with pytest.raises(InputError, match="act_clip_ratio=search needs calibration"):
        qcompile.run_passes(model, "quantize:act_granularity=token:act_clip_ratio=search")
    with pytest.raises(ValueError, match="'search'"):
        QuantizeUniformPass(act_granularity="token", act_clip_ratio="best")


@pytest.mark.parametrize("recipe", ["w8a8tok", "w4a16"])
def test_the_llm_recipes_run_without_a_calibrate_step(recipe: str) -> None:
    model, weights = _chain()
    records = qcompile.run_passes(model, recipe, calibration=CalibrationData.from_list(_batches()))
    assert [r["name"] for r in records] == ["quantize"]
    specs = {v.name: quant_meta.get_quant(v) for v in quant_meta.quantized_values(model.graph)}
    # fc2 writes the graph output: the LLM recipes keep such a head float
    assert records[0]["stats"]["skipped"]["fc2"].startswith("kept float")
    if recipe == "w4a16":
        assert sorted(specs) == ["w1"] and specs["w1"].bits == 4 and specs["w1"].group_size == 128
    else:
        assert sorted(specs) == ["w1", "x"]
        assert specs["x"].kind == "uniform_token" and specs["w1"].group_size is None and specs["w1"].bits == 8
    assert records[0]["sqnr_db"] > (12 if recipe == "w4a16" else 30)


def test_the_pass_context_default_is_kept() -> None:
    quantize = QuantizeUniformPass(act_granularity="token", context=PipelineContext())
    assert quantize.requires == frozenset() and QuantizeUniformPass.requires == {Property.CALIBRATED}


TINY_RUN = ["--calib-samples", "8", "--eval-samples", "6", "--quiet", "--no-baselines"]


@pytest.mark.parametrize(
    "passes",
    [
        "w8a8tok",
        "calibrate,quantize:act_granularity=token:act_symmetric=false",
        "quantize:weight_bits=4:weight_group=16:weight_symmetric=false:act_granularity=none",
    ],
)
def test_the_cli_writes_a_runnable_qdq_model_with_metrics(tmp_path: Path, isolated_cache: Path, passes: str) -> None:
    out = tmp_path / "out"
    assert main(["zoo:tiny", "--passes", passes, "-o", str(out), *TINY_RUN]) == 0
    report = json.loads((out / "report.json").read_text())
    quantize = report["per_pass"][-1]
    assert quantize["name"] == "quantize" and np.isfinite(quantize["sqnr_db"])
    assert 0.9 < report["metric"]["quantized"] <= 1.0 + 1e-9  # cosine against the float model
    session = runtime.make_session(str(out / "model.qdq.onnx"))
    feeds = {i.name: np.random.default_rng(0).normal(size=(2, 8, 32)).astype(np.float32) for i in session.get_inputs()}
    assert all(np.all(np.isfinite(o)) for o in session.run(None, feeds))


def test_the_cli_refuses_w4a16_on_a_model_narrower_than_one_group(tmp_path: Path, isolated_cache: Path, capsys) -> None:
    assert main(["zoo:tiny", "--passes", "w4a16", "-o", str(tmp_path / "out"), *TINY_RUN]) == 2
    assert "32 input channels, fewer than one group of weight_group=128" in capsys.readouterr().err
