"""noisy-bias (NoisyQuant): structure, exactness, bias folding formula, negative cases, second run."""

from __future__ import annotations

import numpy as np
import pytest

import qcompile
from qcompile import runtime
from qcompile.ir import quant_meta
from qcompile.passes.transforms.noisy_bias import AddNoisyBiasPass
from qcompile.pipeline import PreconditionError
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.run import run_passes
from qcompile.testing.builders import tiny_encoder


def _run(model, feeds):
    return runtime.run(runtime.make_session(model), feeds)["y"]


def test_noise_is_added_before_every_biased_linear_input_and_outputs_are_preserved():
    tiny = tiny_encoder()
    expected = _run(tiny.model, tiny.feeds)
    records = run_passes(tiny.model, "noisy", calibration=tiny.calibration)
    stats = records[1]["stats"]
    # ln1.out (q/k/v), ctx (o_proj), ln2.out (fc1), gelu (fc2); the attention matmuls have no constant weight
    assert stats["noised"] == 4 and set(stats["skipped"]) == {"q.h", "probs"}
    adds = [n for n in tiny.model.graph if n.name.endswith("_AddNoise")]
    assert sorted(n.inputs[0].name for n in adds) == ["ctx", "gelu", "ln1.out", "ln2.out"]
    np.testing.assert_allclose(_run(tiny.model, tiny.feeds), expected, rtol=1e-5, atol=1e-5)


def test_biases_absorb_minus_noise_times_weight_and_noise_is_within_half_a_step():
    tiny = tiny_encoder()
    run_passes(tiny.model, "calibrate", calibration=tiny.calibration)
    graph = tiny.model.graph
    x = next(v for n in graph for v in n.outputs if v.name == "ln2.out")
    lo, hi = quant_meta.get_range(x).lo, quant_meta.get_range(x).hi
    step = (max(hi, 0) - min(lo, 0)) / 255
    weight = graph.initializers["fc1.weight"].const_value.numpy().astype(np.float64)
    bias_before = graph.initializers["fc1.bias"].const_value.numpy().astype(np.float64)

    AddNoisyBiasPass(bits=8, context=PipelineContext(seed=3))(tiny.model)

    noise = graph.initializers["ln2.out_noise"].const_value.numpy().astype(np.float64)
    assert noise.shape == (32,) and np.all(np.abs(noise) <= step / 2) and np.any(noise != 0)
    np.testing.assert_allclose(
        graph.initializers["fc1.bias"].const_value.numpy(), bias_before - noise @ weight, rtol=1e-6, atol=1e-7
    )


def test_a_second_run_without_recalibrating_is_refused():
    tiny = tiny_encoder()
    run_passes(tiny.model, "noisy", calibration=tiny.calibration)
    with pytest.raises(PreconditionError, match="CALIBRATED"):
        AddNoisyBiasPass()(tiny.model)


def test_noise_after_quantization_is_an_input_error():
    tiny = tiny_encoder()
    with pytest.raises(qcompile.InputError, match="before quantization"):
        run_passes(tiny.model, "w8a8,noisy", calibration=tiny.calibration)


def test_the_noise_is_frozen_by_the_seed():
    def noise(seed):
        tiny = tiny_encoder()
        run_passes(
            tiny.model, "noisy", context=PipelineContext(calibration=tiny.calibration, seed=seed, progress=False)
        )
        return tiny.model.graph.initializers["ln1.out_noise"].const_value.numpy()

    np.testing.assert_array_equal(noise(5), noise(5))
    assert not np.array_equal(noise(5), noise(6))


def test_noisy_then_w8a8_runs_and_quantizes_the_noisy_inputs():
    tiny = tiny_encoder()
    run_passes(tiny.model, "noisy,w8a8", calibration=tiny.calibration)
    quantized = {v.name for v in quant_meta.quantized_values(tiny.model.graph)}
    assert {"ln1.out_noisy", "ln2.out_noisy", "ctx_noisy", "gelu_noisy"} <= quantized
    assert "ln1.out" not in quantized
