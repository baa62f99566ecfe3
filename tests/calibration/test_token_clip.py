"""Tests of the per-site clip-ratio search of per-token quantizers (qcompile.calibration.token_clip).

The reference quantizer here is written from the formula of docs/methods/per-token.md, not taken from
QuantSpec, and the reference search is a plain loop over the ratios.
"""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.calibration.token_clip import CLIP_RATIOS, TokenClipSearch

TINY = np.float32(1e-12)


def ref_token(x: np.ndarray, bits: int, ratio: float, symmetric: bool) -> np.ndarray:
    x = x.astype(np.float32)
    r = np.float32(ratio)
    if symmetric:
        top = np.float32(2 ** (bits - 1) - 1)
        s = np.maximum(np.abs(x).max(axis=-1, keepdims=True) * r / top, TINY)
        return np.clip(np.rint(x / s), -top, top) * s
    levels = np.float32(2**bits - 1)
    lo = np.minimum(x.min(axis=-1, keepdims=True), 0) * r
    hi = np.maximum(x.max(axis=-1, keepdims=True), 0) * r
    s = np.maximum((hi - lo) / levels, TINY)
    z = np.clip(np.rint(-lo / s), 0, levels)
    return (np.clip(np.rint(x / s) + z, 0, levels) - z) * s


def ref_best(rows: np.ndarray, bits: int, symmetric: bool, weight: np.ndarray | None) -> float:
    g = np.ones(rows.shape[-1]) if weight is None else weight
    errors = [
        float((((rows.astype(np.float64) - ref_token(rows, bits, r, symmetric)) ** 2) * g).sum()) for r in CLIP_RATIOS
    ]
    return CLIP_RATIOS[int(np.argmin(errors))]


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [4, 8])
def test_the_search_picks_the_ratio_a_plain_loop_picks(symmetric: bool, bits: int) -> None:
    rng = np.random.default_rng(3)
    batches = [rng.standard_t(4, (2, 40, 96)).astype(np.float32) + (0 if symmetric else 0.7) for _ in range(3)]
    weight = rng.uniform(0.1, 3.0, 96)
    search = TokenClipSearch(bits, symmetric, weight, rows_per_batch=1000)
    for batch in batches:
        search.update(batch)
    rows = np.concatenate([b.reshape(-1, 96) for b in batches])
    assert search.rows == len(rows)
    assert search.best() == ref_best(rows, bits, symmetric, weight)


def test_gaussian_rows_are_clipped_at_4_bits_much_more_than_uniform_rows() -> None:
    rng = np.random.default_rng(0)
    gaussian, uniform = TokenClipSearch(4, True), TokenClipSearch(4, True)
    gaussian.update(rng.normal(0, 1, (512, 1024)))
    uniform.update(rng.uniform(-1, 1, (512, 1024)))
    assert gaussian.best() < 0.9  # a Gaussian row's max is ≈ 3.4σ; the MSE-best 4-bit range is ≈ 2.5σ
    assert uniform.best() >= 0.95  # nothing beyond the range to trade: at most one grid step's worth is clipped


def test_a_heavily_weighted_outlier_channel_is_not_clipped() -> None:
    rng = np.random.default_rng(1)
    rows = rng.normal(0, 1, (256, 256))
    rows[:, 0] = 12.0  # one outlier channel in every row
    light, heavy = np.ones(256), np.ones(256)
    heavy[0] = 1e4  # the linear reading this site amplifies channel 0
    unweighted, weighted = TokenClipSearch(4, True, light), TokenClipSearch(4, True, heavy)
    unweighted.update(rows)
    weighted.update(rows)
    assert weighted.best() > unweighted.best()
    assert weighted.best() == ref_best(rows, 4, True, heavy)


def test_rows_are_subsampled_per_batch_and_ties_keep_the_largest_ratio() -> None:
    search = TokenClipSearch(4, True, rows_per_batch=16)
    search.update(np.zeros((3, 50, 8), dtype=np.float32))  # every ratio gives zero error
    assert search.rows == 16
    assert search.best() == 1.0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="clip ratios"):
        TokenClipSearch(4, True, ratios=(1.0, 0.0))
    with pytest.raises(ValueError, match="no rows"):
        TokenClipSearch(4, True).best()
    with pytest.raises(ValueError, match="channels"):
        TokenClipSearch(4, True, np.ones(5)).update(np.ones((2, 6)))
