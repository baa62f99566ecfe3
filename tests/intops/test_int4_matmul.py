"""The NumPy reference of the LLM's 4-bit linear layer: equal, within float32 rounding, to the float64
matmul of the dequantized operands; the kernels' split of the integer sum (Σq·a − z·Σa − z_a·Σ(q − z)) is
the same integer; refusals."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.intops.int4_matmul import check_codes, int4_matmul_reference, row_group_sums, weight_group_sums


def _case(m=3, k=96, n=10, group=32, seed=0, bits=4):
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 2**bits, (k, n))
    zero = rng.integers(0, 2**bits, (k // group, n))
    scale = (rng.random((k // group, n)) + 0.5).astype(np.float32) / 16
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    act_scale = (rng.random(m) + 0.5).astype(np.float32) / 64
    act_zero = rng.integers(-20, 20, m)
    return a, q, zero, scale, act_scale, act_zero


@pytest.mark.parametrize("group", [8, 32, 96])
@pytest.mark.parametrize("bits", [4, 8])
def test_reference_is_the_dequantized_matmul(group, bits) -> None:
    a, q, zero, scale, act_scale, act_zero = _case(group=group, bits=bits)
    w = (q.reshape(-1, group, q.shape[1]) - zero[:, None, :]) * scale[:, None, :].astype(np.float64)
    x = (a.astype(np.float64) - act_zero[:, None]) * act_scale[:, None]
    want = x @ w.reshape(q.shape)
    got = int4_matmul_reference(a, q, zero, scale, act_scale, act_zero, group, bits)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_split_integer_sum_is_exact() -> None:
    a, q, zero, _, _, act_zero = _case(group=32)
    group, g = 32, 1
    rows = slice(g * group, (g + 1) * group)
    direct = (a[:, rows].astype(np.int64) - act_zero[:, None]) @ (q[rows] - zero[g]).astype(np.int64)
    split = (
        a[:, rows].astype(np.int64) @ q[rows]
        - zero[g][None, :] * row_group_sums(a, group)[:, g : g + 1]
        - act_zero[:, None] * weight_group_sums(q, zero, group)[g][None, :]
    )
    np.testing.assert_array_equal(direct, split)


def test_without_activation_zero_point_is_zero_point_zero() -> None:
    a, q, zero, scale, act_scale, _ = _case()
    np.testing.assert_array_equal(
        int4_matmul_reference(a, q, zero, scale, act_scale, None),
        int4_matmul_reference(a, q, zero, scale, act_scale, np.zeros(a.shape[0], np.int32)),
    )


def test_refusals() -> None:
    with pytest.raises(ValueError, match="multiple of the group"):
        check_codes(np.zeros((10, 2), np.int64), np.zeros((1, 2)), 4)
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        check_codes(np.full((8, 2), -1), np.zeros((1, 2)), 8)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        check_codes(np.full((8, 2), 256), np.zeros((1, 2)), 8, bits=8)
    with pytest.raises(ValueError, match="4 or 8 bits"):
        check_codes(np.zeros((8, 2), np.int64), np.zeros((1, 2)), 8, bits=3)
    with pytest.raises(ValueError, match="zero points"):
        check_codes(np.zeros((8, 2), np.int64), np.zeros((2, 2)), 8)
