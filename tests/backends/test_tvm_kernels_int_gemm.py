"""TVM int16-pair GEMM (`int_gemm`): == NumPy int_linear bit for bit for full-range uint8/int8 codes
(where a saturating vpmaddubsw kernel is wrong), ragged shapes, fused requantize epilogue; the emitted
code uses vpmaddwd."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile.backends.tvm.kernels.int_gemm import int_gemm_func, pack_weight, schedule_int_gemm
from qcompile.backends.tvm.target import cpu_features, host_target
from qcompile.intops.int_linear import int_linear
from qcompile.intops.requantize import requantize
from qcompile.testing.requantize_cases import per_channel_requantize, requantize_epilogue

pytestmark = pytest.mark.skipif("avx2" not in cpu_features(host_target(1)), reason="the int16-pair GEMM needs AVX2")


def _operands(m: int, k: int, n: int, signed: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (m, k)) if signed else rng.integers(0, 256, (m, k))
    w = rng.integers(-127, 128, (k, n))
    a[0] = -128 if signed else 255  # a full-range row against ±127 columns: the saturating-kernel trap
    w[:, 0], w[:, 1 % n] = 127, -127
    bias = rng.integers(-(2**20), 2**20, n)
    return a, w, bias


def _build_and_run(func, schedule_args, inputs, out_shape, out_dtype):
    import tvm

    lib = tvm.tirx.build(schedule_int_gemm(func, **schedule_args), target=host_target(threads=2))
    out = tvm.runtime.tensor(np.zeros(out_shape, out_dtype))
    lib["main"](*(tvm.runtime.tensor(np.array(x, order="C")) for x in inputs), out)
    return out.numpy(), lib


def _padded(a, w, bias):
    wp = pack_weight(w)
    n8 = wp.shape[0] * 8
    bp = np.zeros(n8, np.int32)
    bp[: len(bias)] = bias
    return a.astype(np.int16), wp, bp


@pytest.mark.parametrize("m, k, n", [(197, 384, 64), (5, 7, 13), (1, 2, 8), (13, 768, 24)])
@pytest.mark.parametrize("signed", [False, True], ids=["uint8", "int8"])
def test_gemm_equals_the_reference(m, k, n, signed) -> None:
    a, w, bias = _operands(m, k, n, signed)
    codes = "int8" if signed else "uint8"  # A read in its own 8-bit dtype, widened inside the kernel
    _, wp, bp = _padded(a, w, bias)
    got, _ = _build_and_run(int_gemm_func(m, k, n, a_dtype=codes), {}, (a.astype(codes), wp, bp), (m, n), "int32")
    np.testing.assert_array_equal(got, int_linear(a, w, bias))


def test_pack_weight_layout() -> None:
    w = np.arange(3 * 10).reshape(3, 10)
    wp = pack_weight(w)
    assert wp.shape == (2, 2, 8, 2) and wp.dtype == np.int16
    for k in range(4):
        for n in range(16):
            assert wp[n // 8, k // 2, n % 8, k % 2] == (w[k, n] if k < 3 and n < 10 else 0)


def test_fused_requantize_epilogue_and_vpmaddwd_in_the_assembly() -> None:
    m, k, n = 20, 96, 16
    a, w, bias = _operands(m, k, n, signed=False, seed=1)
    mult, shift, offset = per_channel_requantize(n)
    inputs = (*_padded(a, w, bias), mult, shift, offset)
    got, lib = _build_and_run(
        int_gemm_func(m, k, n, epilogue=requantize_epilogue(n, -128, 127, "int8")), {}, inputs, (m, n), "int8"
    )
    expected = requantize(int_linear(a, w, bias).astype(np.int32), mult, shift, offset, -128, 127)
    np.testing.assert_array_equal(got, expected)
    # vpmaddwd, or vpdpwssd where LLVM folds it with the vpaddd after it (CPUs with AVX-VNNI): the same exact pair sums
    assert re.search(r"\b(vpmaddwd|vpdpwssd)\b", lib.inspect_source("asm"))


def test_schedule_refuses_rows_that_do_not_divide_the_padded_m() -> None:
    with pytest.raises(ValueError, match="rows=5"):
        schedule_int_gemm(int_gemm_func(7, 8, 8, rows=6), rows=5)  # M padded to 12


@settings(max_examples=8, deadline=None)
@given(
    m=st.integers(1, 20), k=st.integers(1, 40), n=st.integers(1, 40), signed=st.booleans(), seed=st.integers(0, 2**16)
)
def test_gemm_property_any_shape_and_codes(m, k, n, signed, seed) -> None:
    a, w, bias = _operands(m, k, n, signed, seed)
    codes = "int8" if signed else "uint8"
    _, wp, bp = _padded(a, w, bias)
    got, _ = _build_and_run(int_gemm_func(m, k, n, a_dtype=codes), {}, (a.astype(codes), wp, bp), (m, n), "int32")
    np.testing.assert_array_equal(got, int_linear(a, w, bias))
