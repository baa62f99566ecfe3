"""`qcompile.IntLinear` and `qcompile.IntAdd`: ONNX Runtime == NumPy reference == Python integers, bit for
bit, including the full-range operands that saturate ONNX Runtime's AVX2 u8×s8 MatMulInteger kernel."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import given, settings
from hypothesis import strategies as st
from onnxscript import INT8, INT32, INT64, UINT8, script
from onnxscript import opset18 as op

from qcompile.intops.dyadic import dyadic_multiplier
from qcompile.intops.int_linear import IntAdd, IntLinear, int_add, int_linear


@script(default_opset=op)
def _linear_s8(x: INT8["M", "K"], w: INT8["K", "N"], bias: INT32["N"]) -> INT32["M", "N"]:
    return IntLinear(x, w, bias)


@script(default_opset=op)
def _linear_u8(x: UINT8["M", "K"], w: INT8["K", "N"], bias: INT32["N"]) -> INT32["M", "N"]:
    return IntLinear(x, w, bias)


@script(default_opset=op)
def _add(
    a: INT32["N"], b: INT32["N"], m_a: INT64, e_a: INT64, m_b: INT64, e_b: INT64, lo: INT64, hi: INT64
) -> INT64["N"]:
    return IntAdd(a, b, m_a, e_a, m_b, e_b, lo, hi)


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


_S8, _U8, _ADD = (_session(f.to_model_proto()) for f in (_linear_s8, _linear_u8, _add))


def _exact_linear(x: np.ndarray, w: np.ndarray, bias: np.ndarray) -> np.ndarray:
    rows = [
        [sum(int(x[i, k]) * int(w[k, j]) for k in range(x.shape[1])) + int(bias[j]) for j in range(w.shape[1])]
        for i in range(x.shape[0])
    ]
    return np.array(rows, dtype=np.int64)


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 4), k=st.integers(1, 64), n=st.integers(1, 8), unsigned=st.booleans(), data=st.data())
def test_int_linear_matches_python_integers(m, k, n, unsigned, data) -> None:
    lo, hi = (0, 255) if unsigned else (-128, 127)
    x = np.array(
        data.draw(st.lists(st.lists(st.integers(lo, hi), min_size=k, max_size=k), min_size=m, max_size=m)),
        np.uint8 if unsigned else np.int8,
    )
    w = np.array(
        data.draw(st.lists(st.lists(st.integers(-127, 127), min_size=n, max_size=n), min_size=k, max_size=k)), np.int8
    )
    bias = np.array(data.draw(st.lists(st.integers(-(2**24), 2**24), min_size=n, max_size=n)), np.int32)
    expected = _exact_linear(x, w, bias)
    np.testing.assert_array_equal(int_linear(x, w, bias), expected)
    np.testing.assert_array_equal((_U8 if unsigned else _S8).run(None, {"x": x, "w": w, "bias": bias})[0], expected)


def test_full_range_operands_are_exact_where_matmulinteger_may_saturate() -> None:
    # x = 255 against w = ±127: vpmaddubsw pair sums reach 255·127·2 = 64770 > 2^15 − 1. On this project's
    # AVX2 CI CPU, MatMulInteger gives 2,097,088 (64 saturated pairs of 32767) for the exact 4,145,280.
    k = 256
    x = np.full((2, k), 255, np.uint8)
    w = np.tile(np.array([[127], [127], [-127], [127]], np.int8), (k // 4, 3))
    bias = np.zeros(3, np.int32)
    expected = _exact_linear(x, w, bias)
    np.testing.assert_array_equal(_U8.run(None, {"x": x, "w": w, "bias": bias})[0], expected)


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(
        st.tuples(st.integers(-(2**31), 2**31 - 1), st.integers(-(2**31), 2**31 - 1)), min_size=1, max_size=32
    ),
    ratio_a=st.floats(min_value=1e-6, max_value=4.0),
    ratio_b=st.floats(min_value=1e-6, max_value=4.0),
    bounds=st.sampled_from([(-128, 127), (-(2**15), 2**15 - 1)]),
)
def test_int_add_rounds_each_branch_then_clamps_the_sum(values, ratio_a, ratio_b, bounds) -> None:
    a = np.array([v[0] for v in values], np.int32)
    b = np.array([v[1] for v in values], np.int32)
    (m_a, e_a), (m_b, e_b) = dyadic_multiplier(ratio_a), dyadic_multiplier(ratio_b)
    lo, hi = bounds

    def rounded(x: int, m: int, e: int) -> int:
        return (x * m + ((1 << e) >> 1)) >> e

    expected = np.array(
        [
            min(max(rounded(int(p), int(m_a), int(e_a)) + rounded(int(q), int(m_b), int(e_b)), lo), hi)
            for p, q in zip(a, b)
        ],
        np.int64,
    )
    np.testing.assert_array_equal(int_add(a, b, m_a, e_a, m_b, e_b, lo, hi), expected)
    feeds = {
        "a": a,
        "b": b,
        "m_a": m_a,
        "e_a": e_a,
        "m_b": m_b,
        "e_b": e_b,
        "lo": np.array(lo, np.int64),
        "hi": np.array(hi, np.int64),
    }
    np.testing.assert_array_equal(_ADD.run(None, feeds)[0], expected)
