"""TVM VNNI GEMM (`int_gemm_vnni`, vpdpbusd): == NumPy int_linear bit for bit for full-range uint8
activations × int8 weights (255 × −128, the products a saturating int16 kernel gets wrong), int8
activations shifted into uint8 with the shift folded into the bias, ragged shapes (M, K, N padded),
the fused requantize epilogue, both vector widths the CPU has; the emitted code uses vpdpbusd on the
width asked for; packing and refusals."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile.backends.tvm.kernels.int_gemm_vnni import (
    TILES,
    pack_weight,
    schedule_vnni_gemm,
    shifted_bias,
    vnni_gemm_func,
    vnni_lanes,
)
from qcompile.backends.tvm.target import cpu_features, host_target
from qcompile.intops.int_linear import int_linear
from qcompile.intops.requantize import requantize
from qcompile.testing.requantize_cases import per_channel_requantize, requantize_epilogue

FEATURES = cpu_features(host_target(1))
WIDEST = vnni_lanes(FEATURES)
# every width this CPU runs: AVX512-VNNI CPUs run the ymm form too (EVEX-encoded, AVX512-VL)
WIDTHS = [lanes for lanes in (16, 8) if WIDEST is not None and lanes <= WIDEST]
pytestmark = pytest.mark.skipif(WIDEST is None, reason="vpdpbusd needs AVX512-VNNI or AVX-VNNI")
REGISTER = {16: "zmm", 8: "ymm"}


def _operands(m: int, k: int, n: int, signed: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (m, k)) if signed else rng.integers(0, 256, (m, k))
    w = rng.integers(-128, 128, (k, n))
    a[0] = -128 if signed else 255  # a full-range row against the extreme columns
    w[:, 0], w[:, 1 % n] = 127, -128
    bias = rng.integers(-(2**20), 2**20, n)
    return a, w, bias


def _run(m, k, n, lanes, a, w, bias, rows=None, col_blocks=None, epilogue=None, extra=(), out_dtype="int32"):
    import tvm

    codes = str(a.dtype)
    func = vnni_gemm_func(m, k, n, lanes, rows=rows, epilogue=epilogue, out_dtype=out_dtype, a_dtype=codes)
    lib = tvm.tirx.build(schedule_vnni_gemm(func, lanes, rows, col_blocks), target=host_target(threads=2))
    wp = pack_weight(w, lanes)
    bp = np.zeros(wp.shape[0] * lanes, np.int32)
    bp[:n] = shifted_bias(w, bias, codes)
    out = tvm.runtime.tensor(np.zeros((m, n), out_dtype))
    lib["main"](*(tvm.runtime.tensor(np.ascontiguousarray(x)) for x in (a, wp, bp, *extra)), out)
    return out.numpy(), lib


@pytest.mark.parametrize("lanes", WIDTHS)
@pytest.mark.parametrize("m, k, n", [(257, 384, 96), (36, 384, 384), (5, 7, 13), (1, 4, 16), (13, 1536, 24)])
@pytest.mark.parametrize("signed", [False, True], ids=["uint8", "int8"])
def test_gemm_equals_the_reference(m, k, n, signed, lanes) -> None:
    a, w, bias = _operands(m, k, n, signed)
    got, lib = _run(m, k, n, lanes, a.astype("int8" if signed else "uint8"), w.astype(np.int8), bias)
    np.testing.assert_array_equal(got, int_linear(a, w, bias))
    asm = lib.inspect_source("asm")
    assert re.search(rf"vpdpbusd\s[^\n]*%{REGISTER[lanes]}", asm), "no vpdpbusd on the requested vector width"


@pytest.mark.parametrize("lanes", WIDTHS)
def test_fused_requantize_epilogue(lanes) -> None:
    m, k, n = 20, 96, 40
    a, w, bias = _operands(m, k, n, signed=False, seed=1)
    mult, shift, offset = per_channel_requantize(n)
    epilogue = requantize_epilogue(n, 0, 255, "uint8")
    got, _ = _run(
        m,
        k,
        n,
        lanes,
        a.astype(np.uint8),
        w.astype(np.int8),
        bias,
        epilogue=epilogue,
        extra=(mult, shift, offset),
        out_dtype="uint8",
    )
    np.testing.assert_array_equal(got, requantize(int_linear(a, w, bias).astype(np.int32), mult, shift, offset, 0, 255))


@pytest.mark.parametrize("rows, col_blocks", [(6, 4), (8, 3), (1, 1)])
def test_other_register_tiles_are_exact(rows, col_blocks) -> None:
    m, k, n = 31, 68, 200
    a, w, bias = _operands(m, k, n, signed=True, seed=4)
    got, _ = _run(m, k, n, WIDEST, a.astype(np.int8), w.astype(np.int8), bias, rows=rows, col_blocks=col_blocks)
    np.testing.assert_array_equal(got, int_linear(a, w, bias))


@settings(max_examples=8, deadline=None)
@given(
    m=st.integers(1, 20), k=st.integers(1, 40), n=st.integers(1, 40), signed=st.booleans(), seed=st.integers(0, 2**16)
)
def test_gemm_property_any_shape_and_codes(m, k, n, signed, seed) -> None:
    a, w, bias = _operands(m, k, n, signed, seed)
    got, _ = _run(m, k, n, WIDEST, a.astype("int8" if signed else "uint8"), w.astype(np.int8), bias)
    np.testing.assert_array_equal(got, int_linear(a, w, bias))


def test_pack_weight_layout_and_padding() -> None:
    w = np.arange(-60, -60 + 5 * 10).reshape(5, 10).astype(np.int8)
    wp = pack_weight(w, 8)
    assert wp.shape == (2, 2, 8, 4) and wp.dtype == np.int8
    for k in range(8):
        for n in range(16):
            assert wp[n // 8, k // 4, n % 8, k % 4] == (w[k, n] if k < 5 and n < 10 else 0)


def test_shifted_bias_folds_the_int8_shift() -> None:
    rng = np.random.default_rng(5)
    a, w, bias = rng.integers(-128, 128, (3, 9)), rng.integers(-128, 128, (9, 4)), rng.integers(-100, 100, 4)
    assert np.array_equal((a + 128) @ w + shifted_bias(w, bias, "int8"), a @ w + bias)
    assert np.array_equal(shifted_bias(w, bias, "uint8"), bias)


def test_refusals() -> None:
    with pytest.raises(ValueError, match="int8 weight"):
        pack_weight(np.array([[200]]), 16)
    with pytest.raises(ValueError, match="8-bit activation"):
        vnni_gemm_func(4, 4, 16, 16, a_dtype="int16")
    with pytest.raises(ValueError, match="rows=5"):
        schedule_vnni_gemm(vnni_gemm_func(7, 8, 16, 16, rows=4), 16, rows=5)  # M padded to 8
    assert set(TILES) == {16, 8}


def test_widest_vnni_from_cpu_features() -> None:
    assert vnni_lanes({"avx512vnni", "avx512bw", "avxvnni"}) == 16
    assert vnni_lanes({"avxvnni", "avx2"}) == 8
    assert vnni_lanes({"avx2", "avx512vnni"}) is None  # zmm bytes need avx512bw
    assert vnni_lanes({"avx2"}) is None
