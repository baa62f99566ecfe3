"""Tests of the model-independent perplexity machinery with runners whose logits are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qcompile.errors import InputError
from qcompile.zoo.perplexity import (
    PerplexityTask,
    TokenWindows,
    nll_sum,
    perplexity_from_logits,
    score_perplexity,
    split_windows,
)

V = 50


def _uniform(feeds):
    ids = feeds["input_ids"]
    return np.zeros((*ids.shape, V), dtype=np.float32)


def _oracle(feeds):
    """All mass on the next token (the last position predicts nothing and is ignored)."""
    ids = feeds["input_ids"]
    logits = np.full((*ids.shape, V), -1e4, dtype=np.float32)
    nxt = np.concatenate([ids[:, 1:], ids[:, :1]], axis=1)
    np.put_along_axis(logits, nxt[..., None], 1e4, axis=-1)
    return logits


class _Task(PerplexityTask):
    name = "fake"

    def __init__(self, tokens: np.ndarray, window: int, eval_windows: int) -> None:
        super().__init__(window, eval_windows, batch=2)
        self._tokens = tokens

    def _token_ids(self) -> np.ndarray:
        return self._tokens

    def _load_model(self):
        raise NotImplementedError

    def kv_cache(self):  # scores plain callables: no model, no KV cache to feed
        return None


def test_split_windows_drops_the_tail() -> None:
    windows = split_windows(np.arange(23), 5)
    assert windows.shape == (4, 5) and windows.dtype == np.int64 and windows[1].tolist() == [5, 6, 7, 8, 9]
    with pytest.raises(InputError):
        split_windows(np.arange(10), 1)


def test_uniform_logits_give_vocabulary_size() -> None:
    windows = np.random.default_rng(0).integers(0, V, size=(3, 8))
    assert perplexity_from_logits(_uniform({"input_ids": windows}), windows) == pytest.approx(V, rel=1e-12)
    total, count = nll_sum(_uniform({"input_ids": windows}), windows)
    assert count == 3 * 7 and total == pytest.approx(21 * math.log(V))


def test_oracle_gives_one_and_huge_logits_stay_finite() -> None:
    windows = np.random.default_rng(1).integers(0, V, size=(2, 16))
    assert perplexity_from_logits(_oracle({"input_ids": windows}), windows) == pytest.approx(1.0, abs=1e-12)


def test_known_two_way_distribution() -> None:
    # Probability 1/2 on the right token each time → perplexity 2, whatever the logits' offset.
    windows = np.array([[0, 1, 0, 1]])
    logits = np.full((1, 4, 3), -np.inf)
    logits[..., :2] = 1000.0
    assert perplexity_from_logits(logits, windows) == pytest.approx(2.0)


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(InputError, match="do not match"):
        nll_sum(np.zeros((1, 4, V)), np.zeros((1, 5), dtype=np.int64))


def test_windows_split_evaluation_and_calibration() -> None:
    windows = TokenWindows(np.arange(100), window=10, eval_windows=4)
    assert windows.evaluation.shape == (4, 10) and windows.calibration.shape == (6, 10)
    picked = windows.pick_calibration(3, seed=0)
    assert picked.shape == (3, 10) and picked.min() >= 40  # never an evaluation token
    assert np.array_equal(picked, windows.pick_calibration(3, seed=0))
    assert TokenWindows(np.arange(30), window=10, eval_windows=16).eval_count == 2  # one left to calibrate


def test_task_scores_all_runners_on_the_same_windows() -> None:
    tokens = np.random.default_rng(2).integers(0, V, size=200)
    task = _Task(tokens, window=10, eval_windows=5)
    assert task.metric_name == "perplexity" and task.higher_is_better is False
    assert task.sample_limits() == (15, 5) and task.default_eval_samples == 5
    seen = []

    def recording(feeds):
        seen.append(feeds["input_ids"].copy())
        return _oracle(feeds)

    scores = task.evaluate({"ref": recording, "uniform": _uniform, "oracle": _oracle}, samples=3, seed=0)
    assert np.array_equal(np.concatenate(seen), tokens[:30].reshape(3, 10))
    assert scores["ref"] == {"perplexity": pytest.approx(1.0), "top1_agreement": 1.0, "windows": 3, "tokens": 30}
    assert scores["uniform"]["perplexity"] == pytest.approx(V)
    assert scores["uniform"]["top1_agreement"] == pytest.approx(np.mean(tokens[:30].reshape(3, 10)[:, 1:] == 0) * 0.9)
    assert scores["oracle"]["top1_agreement"] == 1.0
    batches = list(task.calibration(4, seed=1, batch_size=3).batches())
    assert [b["input_ids"].shape for b in batches] == [(3, 10), (1, 10)]
    assert all(b["input_ids"].min() >= 0 for b in batches)
    assert task.latency_feeds()["input_ids"].shape == (1, 10)
    assert task.evaluate({"ref": _oracle}, samples=1000, seed=0)["ref"]["windows"] == 5  # capped at the task's


def test_score_perplexity_agreement_counts_positions() -> None:
    windows = np.zeros((2, 4), dtype=np.int64)
    scores = score_perplexity({"a": _uniform, "b": _uniform}, windows)
    assert scores["b"]["top1_agreement"] == 1.0 and scores["b"]["perplexity"] == pytest.approx(V)
