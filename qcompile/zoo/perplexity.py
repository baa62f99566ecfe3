"""Perplexity of causal language models on fixed token windows, the way GPTQ and QuaRot measure it.

A text is tokenized once into one stream of token ids, which is cut into non-overlapping windows of
`window` tokens (the tail shorter than a window is dropped). The first `eval_windows` windows are the
evaluation windows; calibration windows are drawn (seeded) only from the windows after them, so the two
never overlap. Each window is one sample: feeds ``{"input_ids": int64 [B, window]}`` (plus an empty past for
every ``past_key_values.*`` input of a decoder with a KV cache, `lm_export`: a prefill) and the model's first
output is ``logits [B, window, V]``, where position t predicts token t + 1.

Perplexity = exp(mean negative log-likelihood over all predicted tokens of all evaluated windows),
computed in float64 with a stable log-softmax. Every runner is scored on the same windows; the first runner
is the float reference, and `top1_agreement` is the fraction of positions where a runner's argmax
prediction equals the reference's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
from tqdm.auto import tqdm

from qcompile.errors import InputError
from qcompile.pipeline.context import CalibrationData, Feeds
from qcompile.zoo.base import Runner, ZooModel
from qcompile.zoo.lm_export import INPUT_NAME, KvCache, export_causal_lm, kv_cache_of

__all__ = [
    "PerplexityTask",
    "TokenWindows",
    "export_causal_lm",
    "nll_sum",
    "perplexity_from_logits",
    "split_windows",
]


def split_windows(token_ids: Sequence[int] | np.ndarray, window: int) -> np.ndarray:
    """Non-overlapping windows of `window` tokens, int64 [n, window] (a shorter tail is dropped)."""
    if window < 2:
        raise InputError(f"a perplexity window needs at least 2 tokens, got {window}")
    ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    count = len(ids) // window
    return ids[: count * window].reshape(count, window)


def nll_sum(logits: np.ndarray, windows: np.ndarray) -> tuple[float, int]:
    """Sum of the negative log-likelihoods of tokens 1..T-1 of each window given logits [B, T, V] (float64).

    Returns:
        ``(sum of NLL, number of predicted tokens)``.
    """
    logits = np.asarray(logits, dtype=np.float64)
    windows = np.asarray(windows, dtype=np.int64)
    if logits.ndim != 3 or logits.shape[:2] != windows.shape:
        raise InputError(f"logits of shape {logits.shape} do not match token windows of shape {windows.shape}")
    predicting = logits[:, :-1, :]
    targets = windows[:, 1:]
    peak = predicting.max(axis=-1, keepdims=True)
    log_norm = peak[..., 0] + np.log(np.exp(predicting - peak).sum(axis=-1))
    target_logit = np.take_along_axis(predicting, targets[..., None], axis=-1)[..., 0]
    return float(np.sum(log_norm - target_logit)), int(targets.size)


def perplexity_from_logits(logits: np.ndarray, windows: np.ndarray) -> float:
    """exp(mean NLL) of `windows` [B, T] under `logits` [B, T, V]."""
    total, count = nll_sum(logits, windows)
    return math.exp(total / count)


class TokenWindows:
    """A token stream cut into windows: the first `eval_windows` for evaluation, the rest for calibration."""

    def __init__(self, token_ids: Sequence[int] | np.ndarray, window: int, eval_windows: int) -> None:
        self.window = window
        self.all = split_windows(token_ids, window)
        if len(self.all) < 2:
            raise InputError(f"the text holds {len(self.all)} window(s) of {window} tokens; need at least 2")
        # Keep at least one window for calibration.
        self.eval_count = max(1, min(eval_windows, len(self.all) - 1))

    @property
    def evaluation(self) -> np.ndarray:
        return self.all[: self.eval_count]

    @property
    def calibration(self) -> np.ndarray:
        return self.all[self.eval_count :]

    def pick_calibration(self, samples: int, seed: int) -> np.ndarray:
        pool = self.calibration
        count = min(samples, len(pool))
        chosen = np.random.default_rng(seed).choice(len(pool), size=count, replace=False)
        return pool[np.sort(chosen)]


class PerplexityTask(ZooModel):
    """A causal LM scored by perplexity on token windows. Subclasses provide `_load_model` and `_token_ids`."""

    metric_name = "perplexity"
    higher_is_better = False

    def __init__(self, window: int, eval_windows: int, batch: int = 1) -> None:
        self.window = window
        self.eval_windows = eval_windows
        self.batch = batch
        self._windows: TokenWindows | None = None
        self._kv: KvCache | None = None
        self._loaded = False

    def _token_ids(self) -> np.ndarray:
        """The whole token stream (int64)."""
        raise NotImplementedError

    def _load_model(self) -> ir.Model:
        raise NotImplementedError

    def windows(self) -> TokenWindows:
        if self._windows is None:
            self._windows = TokenWindows(self._token_ids(), self.window, self.eval_windows)
        return self._windows

    def load(self) -> ir.Model:
        model = self._load_model()
        self._kv, self._loaded = kv_cache_of(model), True
        return model

    def set_kv_cache(self, kv: KvCache | None) -> None:
        """Declare the KV-cache interface of the runners this task will feed, without loading the model (a
        PyTorch runner takes no past: None)."""
        self._kv, self._loaded = kv, True

    def kv_cache(self) -> KvCache | None:
        """The model's KV-cache interface (None without a cache); loads the model once if needed."""
        if not self._loaded:
            self.load()
        return self._kv

    def feeds(self, windows: np.ndarray) -> Feeds:
        """The prefill feeds of token `windows` [B, T]: the ids and, with a KV cache, an empty past."""
        kv = self.kv_cache()
        return {INPUT_NAME: windows, **(kv.empty(len(windows)) if kv is not None else {})}

    @property
    def default_eval_samples(self) -> int:  # all evaluation windows unless the caller asks for fewer
        return self.eval_windows

    def sample_limits(self) -> tuple[int, int]:
        """Calibration is bounded by the windows after the evaluation ones, evaluation by the evaluation windows."""
        windows = self.windows()
        return len(windows.calibration), windows.eval_count

    def calibration(self, samples: int, seed: int, batch_size: int = 8) -> CalibrationData:
        picked = self.windows().pick_calibration(samples, seed)

        def batches():
            for start in range(0, len(picked), batch_size):
                yield self.feeds(picked[start : start + batch_size])

        return CalibrationData(batches=batches, samples=len(picked))

    def evaluate(
        self, runners: dict[str, Runner], samples: int, seed: int, progress: bool = True
    ) -> dict[str, dict[str, float]]:
        """Score every runner on the first `samples` evaluation windows (all of them if `samples` is larger;
        in order, so `seed` is unused)."""
        chosen = self.windows().evaluation[: max(1, samples)]
        scores = score_perplexity(runners, chosen, self.batch, progress, self.feeds)
        for metrics in scores.values():
            metrics["windows"], metrics["tokens"] = len(chosen), int(chosen.size)
        return scores

    def latency_feeds(self) -> Feeds:
        return self.feeds(self.windows().evaluation[:1])

    # ---- generation (decoders exported with a KV cache)
    generation_tokens = 32  # greedy tokens per prompt

    def tokenizer(self):
        """The model's tokenizer (transformers), or None where the task has none (random-token tasks)."""
        return None

    def generation_prompts(self) -> list[tuple[str, list[int]]]:
        """Fixed prompts as (text shown in reports, token ids); none by default."""
        return []

    def prompt_prefixes(self) -> dict[str, list[int]]:
        """Named pivot prefixes for `intact-kv`: "bos" (the tokenizer's BOS id) and "system" (the chat template's
        default system turn: the ids two one-turn chats share, up to the BOS that opens the user turn)."""
        tokenizer = self.tokenizer()
        if tokenizer is None or tokenizer.bos_token_id is None:
            return {}
        bos = int(tokenizer.bos_token_id)
        prefixes = {"bos": [bos]}
        if getattr(tokenizer, "chat_template", None):
            from qcompile.generation import prompt_ids

            a, b = prompt_ids(tokenizer, "A", chat=True), prompt_ids(tokenizer, "B", chat=True)
            common = []
            for x, y in zip(a, b):
                if x != y:
                    break
                common.append(x)
            starts = [i for i, token in enumerate(common) if token == bos]
            if len(starts) >= 2:
                prefixes["system"] = common[: starts[-1]]
        return prefixes

    def generations(self, sessions: dict, prefix: list[int] | None = None) -> list[dict]:
        """Greedy continuations of every prompt by every session (the first is the float reference), with each
        one's positional token agreement with the reference (`qcompile.generation`); [] without a KV cache.
        `prefix`: token ids the sessions prepend themselves (intact-kv), left out of prompts that start with them."""
        from qcompile.generation import generation_agreement, greedy_tokens, without_prefix

        if self.kv_cache() is None:
            return []
        tokenizer = self.tokenizer()

        def text(ids: list[int]) -> str:
            return tokenizer.decode(ids, skip_special_tokens=True) if tokenizer is not None else " ".join(map(str, ids))

        eos = [tokenizer.eos_token_id] if tokenizer is not None and tokenizer.eos_token_id is not None else []
        reference_label = next(iter(sessions))
        items = []
        for shown, ids in self.generation_prompts():
            ids = without_prefix(ids, prefix)
            tokens = {label: greedy_tokens(s, ids, self.generation_tokens, eos) for label, s in sessions.items()}
            reference = tokens[reference_label]
            items.append(
                {
                    "prompt": shown,
                    "outputs": {label: text(t) for label, t in tokens.items()},
                    "agreement": {
                        label: generation_agreement(reference, t)
                        for label, t in tokens.items()
                        if label != reference_label
                    },
                }
            )
        return items


def score_perplexity(
    runners: dict[str, Runner], windows: np.ndarray, batch: int = 1, progress: bool = False, make_feeds=None
) -> dict[str, dict[str, float]]:
    """Perplexity and top-1 agreement with the first runner, for every runner on the same `windows`
    (`make_feeds(chunk)` builds a chunk's feeds; default: the ids alone)."""
    reference_label = next(iter(runners))
    totals = {label: 0.0 for label in runners}
    agree = {label: 0 for label in runners}
    count = positions = 0
    for start in tqdm(range(0, len(windows), batch), desc="perplexity", disable=not progress, leave=False):
        chunk = windows[start : start + batch]
        feeds = make_feeds(chunk) if make_feeds is not None else {INPUT_NAME: chunk}
        reference_top = None
        for label, runner in runners.items():
            logits = np.asarray(runner(feeds))
            total, n = nll_sum(logits, chunk)
            totals[label] += total
            top = logits.argmax(axis=-1)
            if label == reference_label:
                reference_top, count = top, count + n
            agree[label] += int(np.sum(top == reference_top))
        positions += chunk.size
    return {
        label: {"perplexity": math.exp(totals[label] / count), "top1_agreement": agree[label] / positions}
        for label in runners
    }
