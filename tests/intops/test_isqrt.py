"""`qcompile.IntSqrt` == NumPy reference == math.isqrt, over the whole 62-bit input range."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnxscript import INT64, script
from onnxscript import opset18 as op

from qcompile.intops.isqrt import MAX_INPUT_BITS, IntSqrt, int_sqrt


@script(default_opset=op)
def _isqrt_model(v: INT64["N"]) -> INT64["N"]:
    return IntSqrt(v)


_SESSION = ort.InferenceSession(_isqrt_model.to_model_proto().SerializeToString(), providers=["CPUExecutionProvider"])


def _check(values: list[int]) -> None:
    v = np.array(values, dtype=np.int64)
    expected = np.array([math.isqrt(int(x)) for x in values], dtype=np.int64)
    np.testing.assert_array_equal(int_sqrt(v), expected)
    np.testing.assert_array_equal(_SESSION.run(None, {"v": v})[0], expected)


def test_edges_powers_of_two_and_perfect_squares() -> None:
    edges = {0, 1, 2, 3, 2**MAX_INPUT_BITS}
    for k in range(MAX_INPUT_BITS + 1):
        edges |= {2**k - 1, 2**k, 2**k + 1}
    for r in (1, 2, 3, 1000, 65535, 65536, 2**31 - 1, 2**31):
        edges |= {r * r - 1, r * r, r * r + 1}
    _check(sorted(e for e in edges if 0 <= e <= 2**MAX_INPUT_BITS))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**MAX_INPUT_BITS), min_size=1, max_size=50))
def test_random_values_over_the_whole_range(values) -> None:
    _check(values)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**20), min_size=1, max_size=50))
def test_small_variances_converge(values) -> None:
    _check(values)  # I-ViT's fixed 10 steps from 2^16 fail here


def test_out_of_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="int_sqrt"):
        int_sqrt(np.array([-1]))


def test_the_onnx_body_unrolls_exactly_the_reference_step_count() -> None:
    # the body is written out step by step (onnxscript has no fixed-count loop without Loop); keep it in
    # step with STEPS, which the NumPy reference uses
    from qcompile.intops.isqrt import STEPS

    assert sum(node.op_type == "Min" for node in IntSqrt.to_function_proto().node) == STEPS
