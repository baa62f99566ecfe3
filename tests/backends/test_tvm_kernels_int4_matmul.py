"""TVM 4-bit-weight matmul (`kernels.int4_matmul`): == the NumPy reference (`qcompile.intops.int4_matmul`) bit
for bit, for decode (one row) and prefill tiles, per-channel and grouped weights, weight and activation zero
points, extreme codes (the largest pair sums AVX2's saturating vpmaddubsw meets), ragged rows and columns, in
every flavour the CPU runs (vpdpbusd on zmm and ymm, vpmaddubsw + vpmaddwd on AVX2), and the same for 8-bit
weight codes (on AVX2 split into nibbles in registers); the emitted code uses the flavour's instruction with the
accumulators off the heap; packing and refusals."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile.backends.tvm.fence import fence_float_products
from qcompile.backends.tvm.kernels.int4_matmul import (
    FLAVOURS,
    PANEL,
    SHORT_STEPS,
    STEP,
    flavours_for,
    int4_matmul_func,
    pack_group_params,
    pack_weight,
    padded_columns,
    pick_col_blocks,
)
from qcompile.backends.tvm.target import cpu_features, host_target
from qcompile.intops.int4_matmul import int4_matmul_reference

RUNNABLE = flavours_for(cpu_features(host_target(1)))
pytestmark = pytest.mark.skipif(not RUNNABLE, reason="the 4-bit matmul needs AVX2 at least")
WIDEST = RUNNABLE[0] if RUNNABLE else "llvm"
INSTRUCTION = {
    "avx512vnni": r"vpdpbusd\s[^\n]*%zmm",
    "avxvnni": r"vpdpbusd\s[^\n]*%ymm",
    "llvm": r"vpmaddubsw\s[^\n]*%ymm",
}


def _operands(m: int, k: int, n: int, group: int, seed: int = 0, bits: int = 4):
    rng = np.random.default_rng(seed)
    top = 2**bits - 1
    q = rng.integers(0, top + 1, (k, n))
    zero = rng.integers(0, top + 1, (k // group, n))
    scale = (rng.random((k // group, n)) * 0.1 + 1e-3).astype(np.float32)
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    act_scale = (rng.random(m) * 0.05 + 1e-4).astype(np.float32)
    act_zero = rng.integers(-128, 128, m).astype(np.int32)
    # the largest |acc| a group can reach: the top code against zero 0 and activations −128 against z_a 127
    q[:, 0], zero[:, 0], a[0], act_zero[0] = top, 0, -128, 127
    return a, q, zero, scale, act_scale, act_zero


def _build(m, k, n, group, flavour, act_zero, rows=None, col_blocks=None, bits=4, panel=1):
    import tvm

    func = int4_matmul_func(
        m, k, n, group, flavour, rows=rows, col_blocks=col_blocks, act_zero=act_zero, bits=bits, panel=panel
    )
    return tvm.tirx.build(fence_float_products(func), target=host_target(threads=2))


def _run(lib, flavour, group, a, q, zero, scale, act_scale, act_zero=None, bits=4, panel=1):
    import tvm

    lanes = FLAVOURS[flavour]
    packed_scale, packed_zero, weight_sums = pack_group_params(q, zero, scale, lanes, group, bits, panel)
    args = [a, pack_weight(q, lanes, bits, panel), packed_scale, packed_zero]
    args += [weight_sums, act_scale, act_zero] if act_zero is not None else [act_scale]
    out = tvm.runtime.tensor(np.zeros((a.shape[0], packed_scale.shape[1]), np.float32))
    lib["main"](*(tvm.runtime.tensor(np.ascontiguousarray(x)) for x in args), out)
    return out.numpy()[:, : q.shape[1]]


@pytest.mark.parametrize("flavour", RUNNABLE)
@pytest.mark.parametrize(
    "m, k, n, group",
    [(1, 576, 1536, 576), (1, 576, 192, 64), (1, 1536, 576, 128), (5, 1536, 40, 128), (13, 64, 24, 32), (9, 8, 8, 8)],
)
@pytest.mark.parametrize("with_act_zero", [False, True], ids=["symmetric", "act-zero"])
def test_matmul_equals_the_reference(m, k, n, group, flavour, with_act_zero) -> None:
    a, q, zero, scale, act_scale, act_zero = _operands(m, k, n, group)
    lib = _build(m, k, n, group, flavour, with_act_zero)
    got = _run(lib, flavour, group, a, q, zero, scale, act_scale, act_zero if with_act_zero else None)
    want = int4_matmul_reference(a, q, zero, scale, act_scale, act_zero if with_act_zero else None, group)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("flavour", RUNNABLE)
@pytest.mark.parametrize(
    "m, k, n, group, panel, col_blocks",
    [
        (1, 576, 960, 576, PANEL["llvm"], None),  # a decode task reads whole panels
        (1, 64, 40, 32, 4, None),  # N padded to a whole panel
        (6, 128, 96, 64, 2, 3),  # prefill tiles of 3 column blocks across panels of 2
        (1, 64, 48, 64, 3, 1),  # one column block a task: a third of a panel
    ],
)
@pytest.mark.parametrize("bits", [4, 8])
def test_panels_equal_the_reference(m, k, n, group, panel, col_blocks, bits, flavour) -> None:
    a, q, zero, scale, act_scale, act_zero = _operands(m, k, n, group, seed=6, bits=bits)
    lib = _build(m, k, n, group, flavour, True, col_blocks=col_blocks, bits=bits, panel=panel)
    got = _run(lib, flavour, group, a, q, zero, scale, act_scale, act_zero, bits=bits, panel=panel)
    np.testing.assert_array_equal(got, int4_matmul_reference(a, q, zero, scale, act_scale, act_zero, group, bits=bits))


@pytest.mark.parametrize("flavour", RUNNABLE)
@pytest.mark.parametrize("m, k, n, group", [(1, 576, 1536, 576), (5, 1536, 40, 1536), (3, 12, 20, 4), (9, 64, 24, 32)])
@pytest.mark.parametrize("with_act_zero", [False, True], ids=["symmetric", "act-zero"])
def test_8bit_weights_equal_the_reference(m, k, n, group, flavour, with_act_zero) -> None:
    a, q, zero, scale, act_scale, act_zero = _operands(m, k, n, group, seed=4, bits=8)
    act_zero = act_zero if with_act_zero else None
    got = _run(
        _build(m, k, n, group, flavour, with_act_zero, bits=8),
        flavour,
        group,
        a,
        q,
        zero,
        scale,
        act_scale,
        act_zero,
        bits=8,
    )
    np.testing.assert_array_equal(got, int4_matmul_reference(a, q, zero, scale, act_scale, act_zero, group, bits=8))


@pytest.mark.skipif("llvm" not in RUNNABLE, reason="needs AVX2")
def test_avx2_8bit_codes_do_not_saturate() -> None:
    """Codes 255 against −128 everywhere: one vpmaddubsw pair would be 2·255·128 = 65,280 > 2^15 − 1."""
    m, k, n, group = 2, 64, 16, 64
    a = np.full((m, k), -128, np.int8)
    a[1] = 127
    q, zero = np.full((k, n), 255), np.zeros((1, n), np.int64)
    scale, act_scale = np.ones((1, n), np.float32), np.ones(m, np.float32)
    got = _run(_build(m, k, n, group, "llvm", False, bits=8), "llvm", group, a, q, zero, scale, act_scale, bits=8)
    assert got[0, 0] == -128 * 255 * k and got[1, 0] == 127 * 255 * k


@pytest.mark.parametrize("flavour", RUNNABLE)
def test_emitted_code_uses_the_flavours_instruction_with_accumulators_on_the_stack(flavour) -> None:
    lib = _build(4, 256, 64, 128, flavour, True)
    assert re.search(INSTRUCTION[flavour], lib.inspect_source("asm")), f"no {INSTRUCTION[flavour]} in the code"
    assert "load ptr, ptr @__TVMBackendAllocWorkspace" not in lib.inspect_source("ll"), "accumulators on the heap"


@pytest.mark.skipif("llvm" not in RUNNABLE, reason="needs AVX2")
def test_avx2_sums_pairs_in_int16_before_widening() -> None:
    """Four packed vectors (8 vpmaddubsw) per vpmaddwd: the int16 sums of `SHORT_STEPS` vectors, added with vpaddw."""
    asm = _build(1, 256, 32, 256, "llvm", False).inspect_source("asm")
    madd, widen = len(re.findall(r"\bvpmaddubsw\b", asm)), len(re.findall(r"\bvpmaddwd\b", asm))
    assert re.search(r"\bvpaddw\b", asm) and madd >= 2 * SHORT_STEPS * widen > 0


@pytest.mark.parametrize("rows, col_blocks", [(1, 1), (2, 3), (6, 2), (3, 4)])
def test_other_register_tiles_are_exact(rows, col_blocks) -> None:
    m, k, n, group = 7, 128, 96, 64
    a, q, zero, scale, act_scale, act_zero = _operands(m, k, n, group, seed=3)
    lib = _build(m, k, n, group, WIDEST, True, rows=rows, col_blocks=col_blocks)
    got = _run(lib, WIDEST, group, a, q, zero, scale, act_scale, act_zero)
    np.testing.assert_array_equal(got, int4_matmul_reference(a, q, zero, scale, act_scale, act_zero, group))


@pytest.mark.skipif("llvm" not in RUNNABLE, reason="needs AVX2")
def test_avx2_pairs_do_not_saturate_at_the_extremes() -> None:
    """Every pair of products at its largest magnitude: codes 15 against −128 (2·15·128 = 3840 < 2^15)."""
    m, k, n, group = 2, 64, 16, 64
    a = np.full((m, k), -128, np.int8)
    a[1] = 127
    q, zero = np.full((k, n), 15), np.zeros((1, n), np.int64)
    scale, act_scale = np.ones((1, n), np.float32), np.ones(m, np.float32)
    got = _run(_build(m, k, n, group, "llvm", False), "llvm", group, a, q, zero, scale, act_scale)
    np.testing.assert_array_equal(got, int4_matmul_reference(a, q, zero, scale, act_scale, None, group))
    assert got[0, 0] == -128 * 15 * k


@settings(max_examples=8, deadline=None)
@given(
    m=st.integers(1, 9),
    steps=st.integers(1, 6),
    groups=st.integers(1, 3),
    n=st.integers(1, 40),
    with_act_zero=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_any_shape_and_codes(m, steps, groups, n, with_act_zero, seed) -> None:
    group = steps * STEP
    k = group * groups
    a, q, zero, scale, act_scale, act_zero = _operands(m, k, n, group, seed)
    lib = _build(m, k, n, group, WIDEST, with_act_zero)
    got = _run(lib, WIDEST, group, a, q, zero, scale, act_scale, act_zero if with_act_zero else None)
    want = int4_matmul_reference(a, q, zero, scale, act_scale, act_zero if with_act_zero else None, group)
    np.testing.assert_array_equal(got, want)


def test_pack_weight_layout_and_padding() -> None:
    q = np.random.default_rng(1).integers(0, 16, (16, 10))
    wp = pack_weight(q, 8)
    assert wp.shape == (2, 2, 1, 8, 4) and wp.dtype == np.uint8
    for k in range(16):
        for n in range(16):
            byte = wp[n // 8, k // 8, 0, n % 8, k % 4]
            nibble = (byte >> 4) if (k // 4) % 2 else (byte & 15)
            assert nibble == (q[k, n] if n < 10 else 0)


def test_panels_put_their_column_tiles_side_by_side() -> None:
    q = np.random.default_rng(3).integers(0, 16, (16, 20))
    wp = pack_weight(q, 4, panel=3)  # 5 column tiles of 4, padded to 2 panels of 3 tiles
    assert wp.shape == (2, 2, 3, 4, 4) and padded_columns(20, 4, 3) == 24
    for k in range(16):
        for n in range(24):
            byte = wp[n // 12, k // 8, n // 4 % 3, n % 4, k % 4]
            nibble = (byte >> 4) if (k // 4) % 2 else (byte & 15)
            assert nibble == (q[k, n] if n < 20 else 0)


def test_pack_8bit_weight_layout() -> None:
    q = np.random.default_rng(2).integers(0, 256, (8, 10))
    wp = pack_weight(q, 8, bits=8, panel=2)
    assert wp.shape == (1, 2, 2, 8, 4) and wp.dtype == np.uint8
    for k in range(8):
        for n in range(16):
            assert wp[0, k // 4, n // 8, n % 8, k % 4] == (q[k, n] if n < 10 else 0)


def test_group_params_pad_columns_with_zero_scale() -> None:
    q = np.full((16, 3), 7)
    scale, zero, sums = pack_group_params(q, np.full((2, 3), 8), np.ones((2, 3), np.float32), 8, 8)
    assert scale.shape == zero.shape == sums.shape == (2, 8)
    assert np.all(scale[:, 3:] == 0) and np.all(sums[:, :3] == 8 * (7 - 8))


def test_col_blocks_divide_the_column_tiles() -> None:
    assert pick_col_blocks(576, 16, 4) == 4  # 36 tiles
    assert pick_col_blocks(40, 16, 2) == 1  # 3 tiles
    assert pick_col_blocks(1536, 16, 5) == 4  # 96 tiles


def test_refusals() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_weight(np.zeros((12, 4), np.int64), 16)
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack_weight(np.full((8, 4), 16), 16)
    with pytest.raises(ValueError, match="multiples of 8"):
        int4_matmul_func(1, 64, 16, 12, "llvm")
    with pytest.raises(ValueError, match="flavour"):
        int4_matmul_func(1, 64, 16, 64, "sse2")
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        pack_weight(np.full((8, 4), 256), 16, bits=8)
    with pytest.raises(ValueError, match="multiple of 4 to pack 8-bit"):
        pack_weight(np.zeros((6, 4), np.int64), 16, bits=8)
    with pytest.raises(ValueError, match="4 or 8 bits"):
        int4_matmul_func(1, 64, 16, 64, "llvm", bits=2)
    with pytest.raises(ValueError, match="1024 bytes"):
        int4_matmul_func(8, 64, 64, 64, "avx512vnni", rows=4, col_blocks=4)


def test_flavours_from_cpu_features() -> None:
    assert flavours_for({"avx512vnni", "avx512bw", "avx2"}) == ["avx512vnni", "avxvnni", "llvm"]
    assert flavours_for({"avxvnni", "avx2"}) == ["avxvnni", "llvm"]
    assert flavours_for({"avx2"}) == ["llvm"]
    assert flavours_for({"sse4.2"}) == []
