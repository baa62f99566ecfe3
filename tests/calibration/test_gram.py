"""Tests of the streaming second moment used by GPTQ."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.calibration.gram import Gram


def test_streamed_batches_sum_to_the_gram_matrix_of_all_rows() -> None:
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(3, 5, 6)).astype(np.float32) for _ in range(4)]
    gram = Gram()
    for batch in batches:
        gram.update(batch)
    rows = np.concatenate([b.reshape(-1, 6) for b in batches]).astype(np.float64)
    np.testing.assert_allclose(gram.matrix, rows.T @ rows, rtol=1e-5)
    assert gram.rows == 60 and gram.matrix.dtype == np.float64


def test_channel_count_changes_and_non_finite_batches_are_rejected() -> None:
    gram = Gram()
    gram.update(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="4"):
        gram.update(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        Gram().update(np.array([[np.nan, 1.0]], np.float32))
