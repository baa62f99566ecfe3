"""`qcompile.ILayerNorm`: ONNX Runtime == NumPy reference == Python-integer transcription, bit for bit,
and the result approximates LayerNorm's normalization."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
from hypothesis import given, settings
from hypothesis import strategies as st
from onnxscript import INT32, INT64, script
from onnxscript import opset18 as op

from qcompile.intops.ilayernorm import OUTPUT_FRACTION_BITS, ILayerNorm, i_layernorm


@script(default_opset=op)
def _ln_model(x: INT32["R", "C"], shift: INT64) -> INT64["R", "C"]:
    return ILayerNorm(x, shift)


_SESSION = ort.InferenceSession(_ln_model.to_model_proto().SerializeToString(), providers=["CPUExecutionProvider"])


def _exact_row(row: list[int], shift: int) -> list[int]:
    channels = len(row)
    mean = (2 * sum(row) + channels) // (2 * channels)
    y = [v - mean for v in row]
    sigma = max(math.isqrt(sum((v // 2**shift) ** 2 for v in y)), 1) * 2**shift
    factor = 2**61 // sigma
    return [v * factor // 2**31 for v in y]


def _run(x: np.ndarray, shift: int) -> np.ndarray:
    return _SESSION.run(None, {"x": x, "shift": np.array(shift, np.int64)})[0]


@settings(max_examples=150, deadline=None)
@given(
    rows=st.integers(1, 3),
    channels=st.integers(1, 48),
    bound=st.sampled_from([2**7, 2**15, 2**21]),
    shift=st.integers(0, 8),
    data=st.data(),
)
def test_onnx_runtime_and_reference_match_the_algorithm_bit_for_bit(rows, channels, bound, shift, data) -> None:
    values = data.draw(
        st.lists(
            st.lists(st.integers(-bound, bound - 1), min_size=channels, max_size=channels), min_size=rows, max_size=rows
        )
    )
    x = np.array(values, dtype=np.int32)
    expected = np.array([_exact_row(row, shift) for row in values], dtype=np.int64)
    np.testing.assert_array_equal(i_layernorm(x, shift), expected)
    np.testing.assert_array_equal(_run(x, shift), expected)


def test_constant_rows_give_zero_and_extreme_int16_rows_stay_in_range() -> None:
    x = np.array([[5] * 8, [-(2**15)] * 4 + [2**15 - 1] * 4], dtype=np.int32)
    out = _run(x, 0)
    np.testing.assert_array_equal(out[0], 0)
    assert np.abs(out).max() <= 2**OUTPUT_FRACTION_BITS
    np.testing.assert_array_equal(out, i_layernorm(x, 0))


def test_approximates_layernorm_normalization() -> None:
    rng = np.random.default_rng(0)
    x = np.rint(rng.normal(0, 3000, size=(16, 384)) + rng.normal(0, 500, size=(16, 1))).astype(np.int32)
    out = _run(x, 0) * math.sqrt(384) / 2**OUTPUT_FRACTION_BITS
    xf = x.astype(np.float64)
    reference = (xf - xf.mean(-1, keepdims=True)) / xf.std(-1, keepdims=True)
    assert np.abs(out - reference).max() < 1e-3
