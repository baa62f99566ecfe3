"""smooth-scales (SmoothQuant folding): structure, exactness, negative cases, second run."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import qcompile
from qcompile import runtime
from qcompile.passes.transforms.norm_sites import find_norm_sites
from qcompile.pipeline import PreconditionError
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.run import run_passes
from qcompile.testing.builders import tiny_encoder, tiny_encoder_proto


def _run(model, feeds):
    return runtime.run(runtime.make_session(model), feeds)["y"]


def _absmax_of(proto: onnx.ModelProto, name: str, batches) -> np.ndarray:
    """Per-channel max|x| of intermediate `name`, from a plain onnxruntime session (independent of calibrate)."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.max([np.abs(session.run([name], feeds)[0]).reshape(-1, 32).max(axis=0) for feeds in batches], axis=0)


@pytest.mark.parametrize("decomposed", [False, True])
def test_smoothing_preserves_outputs_and_folds_both_layernorms(decomposed):
    tiny = tiny_encoder(decomposed_layernorm=decomposed)
    expected = _run(tiny.model, tiny.feeds)
    records = run_passes(tiny.model, "smooth", calibration=tiny.calibration)
    smooth = records[1]
    assert smooth["name"] == "smooth-scales" and smooth["stats"]["folded"] == 2 and not smooth["stats"]["skipped"]
    np.testing.assert_allclose(_run(tiny.model, tiny.feeds), expected, rtol=1e-5, atol=1e-5)
    assert smooth["max_abs_err"] <= 1e-4 * np.abs(expected).max()


def test_folded_weights_and_gamma_follow_the_smoothquant_formula():
    alpha = 0.5
    proto = tiny_encoder_proto()
    tiny = tiny_encoder()
    batches = list(tiny.calibration.batches())
    inits = {i.name: onnx.numpy_helper.to_array(i).astype(np.float64) for i in proto.graph.initializer}
    act = _absmax_of(proto, "ln1.out", batches)
    weight = np.max([np.abs(inits[f"{p}.weight"]).max(axis=1) for p in ("q_proj", "k_proj", "v_proj")], axis=0)
    s = np.maximum(np.maximum(act, 1e-5) ** alpha / np.maximum(weight, 1e-5) ** (1 - alpha), 1e-5)

    run_passes(tiny.model, f"smooth:alpha={alpha}", calibration=tiny.calibration)
    values = tiny.model.graph.initializers
    np.testing.assert_allclose(values["ln1.weight"].const_value.numpy(), inits["ln1.weight"] / s, rtol=1e-5)
    np.testing.assert_allclose(values["ln1.bias"].const_value.numpy(), inits["ln1.bias"] / s, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        values["q_proj.weight"].const_value.numpy(), inits["q_proj.weight"] * s[:, None], rtol=1e-5
    )


def test_smoothing_twice_without_recalibrating_is_refused():
    tiny = tiny_encoder()
    run_passes(tiny.model, "smooth", calibration=tiny.calibration)
    with pytest.raises(PreconditionError, match="CALIBRATED"):
        qcompile.pipeline.registry.build_pass(qcompile.pipeline.PassSpec("smooth-scales"), PipelineContext())(
            tiny.model
        )


def test_a_weight_shared_outside_the_site_is_skipped_with_the_reason():
    proto = tiny_encoder_proto()
    # o_proj reads q_proj.weight too (same 32x32 shape), so folding into it would change o_proj
    for node in proto.graph.node:
        if node.name == "o_proj/MatMul":
            node.input[1] = "q_proj.weight"
    model = qcompile.ir.ir.serde.deserialize_model(proto)
    sites, skipped = find_norm_sites(model.graph)
    assert [s.name for s in sites] == ["ln2"]
    assert "shared" in skipped["ln1"]


def test_a_non_constant_weight_is_skipped_with_the_reason():
    proto = tiny_encoder_proto()
    weight = next(i for i in proto.graph.initializer if i.name == "fc1.weight")
    proto.graph.initializer.remove(weight)
    proto.graph.input.append(onnx.helper.make_tensor_value_info("fc1.weight", onnx.TensorProto.FLOAT, [32, 64]))
    model = qcompile.ir.ir.serde.deserialize_model(proto)
    sites, skipped = find_norm_sites(model.graph)
    assert [s.name for s in sites] == ["ln1"] and "not a constant" in skipped["ln2"]


def test_smoothing_after_quantization_is_an_input_error():
    tiny = tiny_encoder()
    with pytest.raises(qcompile.InputError, match="before quantization"):
        run_passes(tiny.model, "w8a8,smooth", calibration=tiny.calibration)


def test_alpha_outside_0_1_is_rejected():
    with pytest.raises(qcompile.InputError, match="alpha"):
        run_passes(tiny_encoder().model, "smooth:alpha=1.5", calibration=tiny_encoder().calibration)


def test_smoothing_raises_the_w8a8_output_sqnr_on_outlier_inputs():
    from qcompile.pipeline.numerics import sqnr_db
    from qcompile.runtime import qdq

    def w8a8_sqnr(passes):
        tiny = tiny_encoder()
        reference = _run(tiny.model, tiny.feeds)
        run_passes(tiny.model, passes, calibration=tiny.calibration, check_numerics=False)
        return sqnr_db(reference, _run(qdq.to_qdq(tiny.model), tiny.feeds))

    assert w8a8_sqnr("smooth,w8a8") > w8a8_sqnr("w8a8")


def test_alpha_search_picks_the_grid_alpha_with_the_smallest_site_loss() -> None:
    from qcompile.calibration.runner import stream_statistics
    from qcompile.calibration.samplers import RowSampler
    from qcompile.passes.transforms.norm_sites import find_norm_sites
    from qcompile.passes.transforms.smooth import ALPHA_GRID, site_loss, smooth_scales

    tiny = tiny_encoder(seed=5)
    records = run_passes(tiny.model, "smooth:alpha=search,w4a4", calibration=tiny.calibration)
    chosen = records[1]["stats"]["alpha"]
    assert set(chosen) == {"ln1", "ln2"} and all(a in ALPHA_GRID for a in chosen.values())
    # recompute the losses independently on a fresh copy with the same sampler seed
    fresh = tiny_encoder(seed=5)
    sites, _ = find_norm_sites(fresh.model.graph)
    samplers, _ = stream_statistics(
        fresh.model,
        fresh.calibration,
        [s.output.name for s in sites],
        lambda _: RowSampler(2048, 0),
        channel_stats=False,
        progress=False,
    )
    for site in sites:
        x = samplers[site.output.name].sample().astype(np.float64)
        weights = [linear.array().astype(np.float64) for linear in site.linears]
        wmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        losses = [site_loss(x, weights, smooth_scales(np.abs(x).max(axis=0), wmax, a), 4) for a in ALPHA_GRID]
        assert chosen[site.name] == ALPHA_GRID[int(np.argmin(losses))]
    assert records[1]["max_rel_err"] < 1e-4


def test_alpha_search_needs_calibration_data() -> None:
    from qcompile.passes.transforms.smooth import FoldSmoothScalesPass

    tiny = tiny_encoder()
    run_passes(tiny.model, "calibrate", calibration=tiny.calibration)
    with pytest.raises(qcompile.errors.InputError, match="calibration"):
        FoldSmoothScalesPass(alpha="search").call(tiny.model)  # no context: no calibration data


def test_alpha_must_be_a_number_or_search() -> None:
    from qcompile.passes.transforms.smooth import FoldSmoothScalesPass

    with pytest.raises(ValueError, match="search"):
        FoldSmoothScalesPass(alpha="auto")
