"""TVM per-token quantizer (`token_quantize`): codes, scales and zero points == `QuantSpec.per_token`'s bit for
bit (which tests/runtime/test_qdq_llm.py holds equal to ONNX Runtime's run of the QDQ ops), for 4 and 8 bits,
symmetric and asymmetric, with and without a clip ratio, rows with an outlier, an all-zero row, ties at .5,
widths with and without a vector tail; refusals."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile.backends.tvm.fence import fence_float_products
from qcompile.backends.tvm.kernels.token_quantize import SHIFT, token_quantize_func
from qcompile.backends.tvm.target import host_target
from qcompile.ir.quant_meta import QuantSpec


def _rows(m: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((m, k)) * rng.uniform(0.01, 20, (m, 1))).astype(np.float32)
    x[0, k // 2] = 400.0  # an outlier channel
    if m > 1:
        x[1] = 0.0  # the scale falls back to its floor
    if m > 2:
        x[2] = np.arange(k, dtype=np.float32) / 2 - k / 4  # halves: rint's ties to even
    return x


def _quantize(x: np.ndarray, bits: int, symmetric: bool, ratio: float):
    import tvm

    m, k = x.shape
    lib = tvm.tirx.build(fence_float_products(token_quantize_func(m, k, bits, symmetric, ratio)), host_target(2))
    outs = [np.zeros((m, k), np.int8), np.zeros(m, np.float32)] + ([] if symmetric else [np.zeros(m, np.int32)])
    tensors = [tvm.runtime.tensor(o) for o in outs]
    lib["main"](tvm.runtime.tensor(x), *tensors)
    return [t.numpy() for t in tensors]


def _check(x: np.ndarray, bits: int, symmetric: bool, ratio: float) -> None:
    spec = QuantSpec.per_token(bits, symmetric, ratio)
    got = _quantize(x, bits, symmetric, ratio)
    scale, zero_point = spec.token_params(x)
    shift = 0 if symmetric else SHIFT
    np.testing.assert_array_equal(got[0].astype(np.int32) + shift, spec.quantize(x))
    np.testing.assert_array_equal(got[1], scale[:, 0])
    if not symmetric:
        np.testing.assert_array_equal(got[2] + SHIFT, zero_point[:, 0].astype(np.int32))


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "asymmetric"])
@pytest.mark.parametrize("ratio", [1.0, 0.9])
@pytest.mark.parametrize("m, k", [(5, 576), (3, 1536), (4, 40), (1, 7)])
def test_codes_equal_the_spec(bits, symmetric, ratio, m, k) -> None:
    _check(_rows(m, k), bits, symmetric, ratio)


@settings(max_examples=10, deadline=None)
@given(
    m=st.integers(1, 6),
    k=st.integers(1, 70),
    bits=st.sampled_from([3, 4, 8]),
    symmetric=st.booleans(),
    ratio=st.sampled_from([1.0, 0.95, 0.8]),
    seed=st.integers(0, 2**16),
)
def test_property_any_shape(m, k, bits, symmetric, ratio, seed) -> None:
    _check(_rows(m, k, seed), bits, symmetric, ratio)


def test_refusals() -> None:
    with pytest.raises(ValueError, match="2 to 8 bits"):
        token_quantize_func(1, 16, 9, True)
