"""Floating-point grids: every code decoded from its bits against the formats' published values, and
`fp_round` against an independent nearest-value search with ties to even, over every grid point, every
midpoint between neighbours, random values spanning all binades, and values beyond the largest one."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.math.fp_formats import FORMATS, FORMATS_BY_BITS, enumerate_grid, fp_format, fp_round


def test_the_grids_are_the_published_ones() -> None:
    # OCP MX FP4 E2M1: 0, 0.5, 1, 1.5, 2, 3, 4, 6 (our unit scale is twice that: bias 1)
    np.testing.assert_array_equal(enumerate_grid(fp_format("e2m1")) / 2, [0, 0.5, 1, 1.5, 2, 3, 4, 6])
    np.testing.assert_array_equal(enumerate_grid(fp_format("e3m0")), [0, 2, 4, 8, 16, 32, 64, 128])
    np.testing.assert_array_equal(enumerate_grid(fp_format("e1m2")), [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5])
    e4m3, e5m2 = fp_format("e4m3"), fp_format("e5m2")
    assert e4m3.max_value / e4m3.onnx_scale == 448.0 and e5m2.max_value / e5m2.onnx_scale == 57344.0
    assert len(enumerate_grid(e4m3)) == 127  # 2^7 magnitudes, the NaN code S.1111.111 left out
    assert len(enumerate_grid(e5m2)) == 124  # 2^7 magnitudes, exponent 11111 (inf, NaN) left out
    assert enumerate_grid(e4m3)[1] / e4m3.onnx_scale == 2.0**-9  # the smallest subnormal of E4M3FN
    for name, fmt in FORMATS.items():
        assert fmt.bits == (4 if name in FORMATS_BY_BITS[4] else 8)
        assert enumerate_grid(fmt)[-1] == fmt.max_value


def _reference(y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Nearest grid magnitude (saturating); a tie goes to the neighbour that is an even multiple of the gap."""
    a = np.minimum(np.abs(y.astype(np.float64)), grid[-1])
    hi = np.minimum(np.searchsorted(grid, a), len(grid) - 1)
    lo = np.maximum(hi - 1, 0)
    below, above = grid[lo], grid[hi]
    gap = np.where(above > below, above - below, 1.0)
    pick_above = (above - a < a - below) | ((above - a == a - below) & (np.rint(above / gap) % 2 == 0))
    return np.sign(y) * np.where(a == above, above, np.where(pick_above, above, below))


@pytest.mark.parametrize("name", list(FORMATS))
def test_fp_round_is_nearest_with_ties_to_even(name: str) -> None:
    fmt = fp_format(name)
    grid = enumerate_grid(fmt)
    midpoints = (grid[1:] + grid[:-1]) / 2
    rng = np.random.default_rng(0)
    randoms = np.exp2(rng.uniform(-fmt.mantissa_bits - 2, fmt.top_binade + 2, 20000))
    y = np.concatenate([grid, midpoints, randoms, [fmt.max_value * 1.5, 1e30]]).astype(np.float32)
    y = np.concatenate([y, -y])
    got = fp_round(y, fmt)
    np.testing.assert_array_equal(got, _reference(y, grid).astype(np.float32))
    assert set(np.abs(got).tolist()) <= set(grid.tolist())
