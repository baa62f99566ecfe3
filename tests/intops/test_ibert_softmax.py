"""`qcompile.IBertSoftmax`: ONNX Runtime == NumPy reference == Python-integer transcription, bit for bit;
more accurate than Shiftmax post-training (the reason the recipe measures both)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnxscript import INT32, INT64, script
from onnxscript import opset18 as op

from qcompile.intops.ibert_softmax import IBertSoftmax, ibert_softmax, ibert_softmax_params
from qcompile.intops.int_exp import exp_x0
from qcompile.intops.shiftmax import shiftmax


@script(default_opset=op)
def _model(x: INT32["R", "N"], x0: INT64, b_int: INT64, c_int: INT64, n: INT64, bits: INT64) -> INT64["R", "N"]:
    return IBertSoftmax(x, x0, b_int, c_int, n, bits)


_SESSION = ort.InferenceSession(_model.to_model_proto().SerializeToString(), providers=["CPUExecutionProvider"])


def _run(x, x0, b_int, c_int, n, bits) -> np.ndarray:
    feeds = {
        "x": x,
        **{k: np.array(v, np.int64) for k, v in dict(x0=x0, b_int=b_int, c_int=c_int, n=n, bits=bits).items()},
    }
    return _SESSION.run(None, feeds)[0]


def _exact_row(row, x0, b_int, c_int, n, bits) -> list[int]:
    top = max(row)
    exps = []
    for v in row:
        d = max(v - top, 30 * x0)
        q = d // x0
        r = d - q * x0
        exps.append((r * (r + b_int) + c_int) * 2**n // 2**q)
    factor = 2**62 // sum(exps)
    return [e * factor // 2 ** (62 - bits) for e in exps]


@settings(max_examples=150, deadline=None)
@given(
    rows=st.integers(1, 3),
    length=st.integers(1, 64),
    scale=st.floats(min_value=4e-5, max_value=0.5),
    bits=st.sampled_from([8, 16]),
    data=st.data(),
)
def test_onnx_runtime_and_reference_match_the_algorithm_bit_for_bit(rows, length, scale, bits, data) -> None:
    values = data.draw(
        st.lists(st.lists(st.integers(-(2**15), 2**15), min_size=length, max_size=length), min_size=rows, max_size=rows)
    )
    x = np.array(values, dtype=np.int32)
    params = ibert_softmax_params(scale)
    expected = np.array([_exact_row(row, *params, bits) for row in values], dtype=np.int64)
    np.testing.assert_array_equal(ibert_softmax(x, *params, bits), expected)
    np.testing.assert_array_equal(_run(x, *params, bits), expected)
    assert expected.min() >= 0 and expected.max() <= 2**bits


@pytest.mark.parametrize("scale", [4e-5, 1e-3, 0.1, 0.69])
def test_the_polynomial_keeps_31_bits_of_headroom(scale) -> None:
    _, _, c_int, n = ibert_softmax_params(scale)
    assert 2**30 <= c_int * 2**n < 2**31


@pytest.mark.parametrize("scale", [1e-5, 2.0, 0.0, -0.1])
def test_scales_outside_the_int32_polynomial_range_are_rejected(scale) -> None:
    with pytest.raises(ValueError, match="I-BERT softmax"):
        ibert_softmax_params(scale)


def test_i_exp_softmax_on_16_bit_scores_is_closer_to_softmax_than_shiftmax() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(64, 197))
    scale = np.abs(logits).max() / (2**15 - 1)
    x = np.rint(logits / scale).astype(np.int32)
    reference = np.exp(x * scale - (x * scale).max(axis=-1, keepdims=True))
    reference /= reference.sum(axis=-1, keepdims=True)
    ibert = _run(x, *ibert_softmax_params(scale), 16) / 2.0**16
    shift = shiftmax(x, exp_x0(scale), 15, 16) / 2.0**15
    # METHODS.md §2.1: i-exp max error 1.9e-3 (vs ≈ 0.08 measured for Shiftmax, §1.2)
    assert np.abs(ibert - reference).max() < 5e-3
    assert np.abs(ibert - reference).max() < 0.25 * np.abs(shift - reference).max()
