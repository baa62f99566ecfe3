"""`requantize_to`: moving an integer value to a new scale, with per-channel signed scales, zero points
and real offsets, against float64 arithmetic and the reference interpreter."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from qcompile import runtime
from qcompile.intops.reference import run_reference
from qcompile.passes.lowering.emitter import Emitter
from qcompile.passes.lowering.int_value import IntValue, container, requantize_to


def _graph(source_scale, zero_point, offset, target_scale, target_zero, lo, hi) -> ir.Model:
    x = ir.Value(name="q", type=ir.TensorType(ir.DataType.INT32), shape=ir.Shape(["n", 6]))
    graph = ir.Graph([x], [], nodes=[], opset_imports={"": 18}, name="g")
    model = ir.Model(graph, ir_version=10)
    emit = Emitter(model)
    source = IntValue(x, np.asarray(source_scale, np.float64), zero_point, -(2**31), 2**31 - 1, offset)
    out = requantize_to(emit, source, target_scale, target_zero, lo, hi, "t").value
    graph.extend(emit.nodes)
    graph.outputs.append(out)
    return model


def _expected(q, source_scale, zero_point, offset, target_scale, target_zero, lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """(expected codes, mask of exact rounding ties where m/2^e ≈ r may round either way)."""
    real = (q.astype(np.float64) - zero_point) * np.asarray(source_scale) / target_scale
    if offset is not None:
        real = real + np.asarray(offset) / target_scale  # rounded together with the product, once
    rounded = np.floor(real + 0.5)  # half up, as Requantize
    tie = np.abs(real - np.floor(real) - 0.5) < 1e-6
    return np.clip(rounded + target_zero, lo, hi), tie


CASES = [
    ("per-tensor, asymmetric target", 0.013, 0, None, 0.05, 128, 0, 255),
    ("per-channel signed scale", np.array([0.01, -0.02, 0.03, -0.001, 0.0, 0.5]), 0, None, 0.07, 0, -128, 127),
    (
        "offset (LayerNorm β) and zero point",
        np.array([0.01, -0.02, 0.03, 0.004, 0.02, 0.5]),
        3,
        np.array([0.5, -1.0, 0.0, 2.0, -0.3, 0.1]),
        0.05,
        10,
        0,
        255,
    ),
    ("int16 target", 1e-4, 0, None, 3e-4, 0, -(2**15), 2**15 - 1),
]


@pytest.mark.parametrize("label, scale, zero, offset, target, target_zero, lo, hi", CASES, ids=[c[0] for c in CASES])
def test_requantize_to_matches_float64_and_the_reference(
    label, scale, zero, offset, target, target_zero, lo, hi
) -> None:
    model = _graph(scale, zero, offset, target, target_zero, lo, hi)
    rng = np.random.default_rng(0)
    q = rng.integers(-5000, 5000, size=(200, 6)).astype(np.int32)
    (name,) = [o.name for o in model.graph.outputs]
    out = runtime.run(runtime.make_session(model), {"q": q})[name]
    assert out.dtype == np.dtype(container(lo, hi).numpy())
    expected, tie = _expected(q, scale, zero, offset, target, target_zero, lo, hi)
    # the dyadic multiplier is m/2^e ≈ r within 2^-31 relative, so an exact tie (e.g. 35·0.001/0.07 = 0.5)
    # may round down; everywhere else the codes equal float64 arithmetic
    np.testing.assert_array_equal(out[~tie], expected[~tie])
    assert np.all(np.abs(out[tie] - expected[tie]) <= 1)
    np.testing.assert_array_equal(run_reference(ir.serde.serialize_model(model), {"q": q})[name], out)


def test_an_offset_is_rounded_with_each_element_so_a_channel_gets_no_common_bias() -> None:
    # β = 0.3 output steps: rounding it on its own would add 0 to every element and leave a −0.3 step
    # bias in the channel mean; rounded together with each element the mean error is ~0
    target = 0.05
    model = _graph(0.0123, 0, np.full(6, 0.3 * target), target, 0, -(2**15), 2**15 - 1)
    q = np.random.default_rng(2).integers(-20000, 20000, size=(4000, 6)).astype(np.int32)
    (name,) = [o.name for o in model.graph.outputs]
    out = runtime.run(runtime.make_session(model), {"q": q})[name].astype(np.float64)
    error = out - (q * 0.0123 / target + 0.3)
    assert np.all(np.abs(error) <= 0.5 + 1e-6)
    assert np.all(np.abs(error.mean(axis=0)) < 0.03)  # ±0.29/√4000 ≈ 0.005 per channel by chance


def test_a_large_offset_on_a_full_int32_source_drops_multiplier_bits_instead_of_overflowing() -> None:
    # ratio 2^-40 gives e ≈ 70 → capped 62, and an offset of 1000 steps makes round(1000·2^62) overflow
    model = _graph(2.0**-40, 0, np.full(6, 1000.0), 1.0, 0, -(2**15), 2**15 - 1)
    q = np.array([[-(2**31), 2**31 - 1, 0, 2**30, -(2**30), 12345]] * 2, np.int32)
    (name,) = [o.name for o in model.graph.outputs]
    out = runtime.run(runtime.make_session(model), {"q": q})[name]
    np.testing.assert_array_equal(out, np.floor(q * 2.0**-40 + 1000.5))
    np.testing.assert_array_equal(run_reference(ir.serde.serialize_model(model), {"q": q})[name], out)
