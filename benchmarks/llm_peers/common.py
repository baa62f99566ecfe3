"""Shared helpers for the peer-quantizer measurements on SmolLM2-135M (numpy only, so every peer venv can import it).

Windows, calibration pick and perplexity are copied from qcompile (qcompile/zoo/perplexity.py `nll_sum`,
`TokenWindows.pick_calibration`) so that every peer is scored on exactly the windows qcompile uses:
512-token windows of /root/.cache/qcompile/tokens/smollm2-135m_lee.npy, the first 16 for evaluation,
N=128 calibration windows drawn with numpy seed 0 from the rest.

Not a runnable script; imported by ort_peer.py, llmc_peer.py, quark_peer.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np

TOKENS = Path("/root/.cache/qcompile/tokens/smollm2-135m_lee.npy")
ONNX_MODEL = Path("/root/.cache/qcompile/models/smollm2-135m/model.onnx")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WINDOW = 512
EVAL_WINDOWS = 16
CALIB_WINDOWS = 128
SEED = 0
OUT = Path("/work/peers/out")  # per-run JSON records (collected by collect.py)


def windows() -> np.ndarray:
    ids = np.load(TOKENS).astype(np.int64).reshape(-1)
    count = len(ids) // WINDOW
    return ids[: count * WINDOW].reshape(count, WINDOW)


def eval_windows() -> np.ndarray:
    return windows()[:EVAL_WINDOWS]


def calib_windows(n: int = CALIB_WINDOWS) -> np.ndarray:
    pool = windows()[EVAL_WINDOWS:]
    n = min(n, len(pool))
    chosen = np.random.default_rng(SEED).choice(len(pool), size=n, replace=False)
    return pool[np.sort(chosen)]


def nll_sum(logits: np.ndarray, win: np.ndarray) -> tuple[float, int]:
    """Copy of qcompile.zoo.perplexity.nll_sum: NLL of tokens 1..T-1 given logits [B, T, V], in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    win = np.asarray(win, dtype=np.int64)
    assert logits.ndim == 3 and logits.shape[:2] == win.shape, (logits.shape, win.shape)
    predicting = logits[:, :-1, :]
    targets = win[:, 1:]
    peak = predicting.max(axis=-1, keepdims=True)
    log_norm = peak[..., 0] + np.log(np.exp(predicting - peak).sum(axis=-1))
    target_logit = np.take_along_axis(predicting, targets[..., None], axis=-1)[..., 0]
    return float(np.sum(log_norm - target_logit)), int(targets.size)


def score(run_logits, label: str) -> tuple[float, np.ndarray, float]:
    """Run `run_logits(window [1, 512] int64) -> logits [1, 512, V]` on the 16 evaluation windows.

    Returns (perplexity, argmax tokens [16, 511] at the predicting positions 0..510, seconds)."""
    ev = eval_windows()
    total, count, tops = 0.0, 0, []
    start = time.perf_counter()
    for i in range(len(ev)):
        chunk = ev[i : i + 1]
        logits = np.asarray(run_logits(chunk))
        t, n = nll_sum(logits, chunk)
        total, count = total + t, count + n
        tops.append(logits[0, :-1].argmax(axis=-1))
        print(f"  [{label}] window {i + 1}/{len(ev)}  running ppl {math.exp(total / count):.4f}", flush=True)
    return math.exp(total / count), np.stack(tops), time.perf_counter() - start


def fp_top(venv_tag: str, compute) -> tuple[float, np.ndarray]:
    """The float model's perplexity and argmax tokens for this venv/runtime (computed once, cached under OUT)."""
    OUT.mkdir(parents=True, exist_ok=True)
    cache = OUT / f"{venv_tag}_fp_top1.npy"
    meta = OUT / f"{venv_tag}_fp.json"
    if cache.is_file() and meta.is_file():
        return json.loads(meta.read_text())["perplexity"], np.load(cache)
    ppl, top, secs = compute()
    np.save(cache, top)
    meta.write_text(json.dumps({"perplexity": ppl, "eval_seconds": secs}))
    return ppl, top


def record(name: str, data: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    data = dict(data)
    data.setdefault("date_utc", time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()))
    data.setdefault("python", platform.python_version())
    data.setdefault("threads_env", {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    (OUT / f"{name}.json").write_text(json.dumps(data, indent=2))
    print(json.dumps(data, indent=2), flush=True)


def agreement(top: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean(top == ref))


def record_failure(name: str, peer: str, setting: str, error: Exception, start: float) -> None:
    """Record a peer setting that raised: the row says why."""
    import traceback

    traceback.print_exc()
    record(
        name,
        {
            "peer": peer,
            "setting": setting,
            "failed": True,
            "error": f"{type(error).__name__}: {str(error)[:300]}",
            "seconds_before_failure": time.perf_counter() - start,
        },
    )


def record_scores(
    name: str, peer: str, setting: str, scores: tuple, reference: tuple, quantize_seconds: float, **extra
) -> None:
    """Record a scored peer setting: `scores` = (perplexity, top-1 tokens, eval seconds) from `score`,
    `reference` = (FP perplexity, FP top-1 tokens) from `fp_top`."""
    ppl, top, eval_seconds = scores
    fp_ppl, fp_tokens = reference
    record(
        name,
        {
            "peer": peer,
            "setting": setting,
            "perplexity": ppl,
            "fp_perplexity": fp_ppl,
            "ratio_to_fp": ppl / fp_ppl,
            "top1_agreement": agreement(top, fp_tokens),
            "quantize_seconds": quantize_seconds,
            "eval_seconds": eval_seconds,
            **extra,
        },
    )


def peer_arguments() -> argparse.Namespace:
    """--setting, --threads (2), --calib (CALIB_WINDOWS): the command line every peer script takes."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--setting", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calib", type=int, default=CALIB_WINDOWS)
    return parser.parse_args()


def record_float(name: str, peer: str, setting: str, fp_ppl: float) -> None:
    """Record the peer's own float reference (its runtime's FP perplexity)."""
    record(
        name,
        {
            "peer": peer,
            "setting": setting,
            "perplexity": fp_ppl,
            "fp_perplexity": fp_ppl,
            "top1_agreement": 1.0,
            "artifact": "float reference",
        },
    )
