"""`qcompile.Shiftmax`: ONNX Runtime == NumPy reference == a Python-integer transcription of I-ViT's
algorithm (METHODS.md §1.2), bit for bit; and the result approximates softmax."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnxscript import INT32, INT64, script
from onnxscript import opset18 as op

from qcompile.intops.int_exp import exp_x0
from qcompile.intops.shiftmax import Shiftmax, shiftmax


@script(default_opset=op)
def _shiftmax_model(x: INT32["R", "N"], x0: INT64, n: INT64, out_bits: INT64) -> INT64["R", "N"]:
    return Shiftmax(x, x0, n, out_bits)


_SESSION = ort.InferenceSession(
    _shiftmax_model.to_model_proto().SerializeToString(), providers=["CPUExecutionProvider"]
)


def _ort(x: np.ndarray, x0: int, n: int, out_bits: int) -> np.ndarray:
    feeds = {"x": x, "x0": np.array(x0, np.int64), "n": np.array(n, np.int64), "out_bits": np.array(out_bits, np.int64)}
    return _SESSION.run(None, feeds)[0]


def _exact_row(row: list[int], x0: int, n: int, out_bits: int) -> list[int]:
    """Python integers and fractions (// is floor division), the PyTorch form of I-ViT's int_exp_shift."""
    top = max(row)
    exps = []
    for value in row:
        d = value - top
        p = max(d + d // 2 - d // 16, n * x0)
        q = p // x0
        r = p - q * x0
        exps.append(max(0, math.floor((Fraction(r, 2) - x0) * 2 ** (n - q))))
    factor = 2**62 // sum(exps)
    return [e * factor // 2 ** (63 - out_bits) for e in exps]


@settings(max_examples=150, deadline=None)
@given(
    rows=st.integers(1, 4),
    length=st.integers(1, 40),
    scale=st.floats(min_value=1e-3, max_value=0.5),
    n=st.sampled_from([15, 16]),
    out_bits=st.sampled_from([8, 16]),
    data=st.data(),
)
def test_onnx_runtime_and_reference_match_the_algorithm_bit_for_bit(rows, length, scale, n, out_bits, data) -> None:
    x0 = exp_x0(scale)
    bound = 2**15  # int16-range scores, as I-ViT's requantized Q·Kᵀ; extremes included by hypothesis
    values = data.draw(
        st.lists(st.lists(st.integers(-bound, bound), min_size=length, max_size=length), min_size=rows, max_size=rows)
    )
    x = np.array(values, dtype=np.int32)
    expected = np.array([_exact_row(row, x0, n, out_bits) for row in values], dtype=np.int64)
    np.testing.assert_array_equal(shiftmax(x, x0, n, out_bits), expected)
    np.testing.assert_array_equal(_ort(x, x0, n, out_bits), expected)
    assert expected.min() >= 0 and expected.max() <= 2 ** (out_bits - 1)


def test_shiftmax_approximates_softmax() -> None:
    # METHODS.md §1.2 measured max |error| ≈ 0.08 on 197-token rows of N(0, 3) logits at 8-bit input
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(64, 197))
    scale = np.abs(logits).max() / 127
    x = np.clip(np.rint(logits / scale), -128, 127).astype(np.int32)
    out = _ort(x, exp_x0(scale), 15, 16) / 2.0**15
    reference = np.exp(x * scale - (x * scale).max(axis=-1, keepdims=True))
    reference /= reference.sum(axis=-1, keepdims=True)
    assert np.abs(out - reference).max() < 0.1
    assert np.all(np.abs(out.sum(axis=-1) - 1.0) < 0.05)


def test_x0_outside_int32_is_rejected() -> None:
    with pytest.raises(ValueError, match="outside int32"):
        exp_x0(1e-12)
