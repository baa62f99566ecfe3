"""The job's TVM step for decoder LLMs (`--target llvm`): compile model.qdq.onnx's decode and prefill steps into
decoder.so, check the library against ONNX Runtime on the artifact, score it, time its decode step.

The check runs one prompt through both (whole `prefill` chunks and decode steps of the library; one prefill call of
the artifact) and then `CHECK_STEPS` greedy decode steps, both fed ONNX Runtime's argmax tokens, and compares the
logits of every call. They are not bit-identical: the library's float parts (RMSNorm, the online transforms,
softmax) sum in another order than ONNX Runtime's, so a per-token quantizer's input can land on the other side of a
rounding boundary. The integer kernels themselves are tested bit-exactly against their NumPy references
(tests/backends). The check fails the job (a backend bug) when the logits differ by more than `LOGIT_TOLERANCE` of
their range, and reports the largest difference and the argmax agreement.

The library then scores the evaluation windows itself (label `tvm_int`: one decode step per token from an empty
cache, so the numbers are the deployed step's), next to the artifact in ONNX Runtime (`qcompile`). Its latency row
is one prefill of the latency window; `decode_ms` times one decode step at the context of that window for the
library, the artifact and the float model in ONNX Runtime, medians in one process.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

__all__ = ["build_decoder_library", "DecoderScoring", "decode_ms", "LOGIT_TOLERANCE", "CHECK_STEPS"]

LOGIT_TOLERANCE = 2e-2  # of max |logit| of ONNX Runtime's call (measured in docs/tvm-backend.md)
CHECK_STEPS = 4
DECODE_REPEATS = 16


def build_decoder_library(target: str, artifact: Path, staging: Path, ort_session, ids, capacity: int, threads, log):
    """Compile and save the library into `staging`, load it and check it against `ort_session` on `ids` (module
    docstring). Returns (the loaded library, the report's `tvm` entry)."""
    from qcompile.backends.tvm import pool_threads
    from qcompile.backends.tvm.decoder import artifact as library_files

    chunk = min(library_files.DEFAULT_CHUNK, max(1, len(ids) - 1))
    log(f"compiling the decoder's steps with TVM for {target} ({capacity} cache positions, prefill chunks of {chunk})")
    compiled = library_files.compile_decoder(artifact, target, capacity, chunk, threads=threads)
    files = library_files.save(compiled, staging)
    library = library_files.load(staging)
    report = {
        **{key: compiled.metadata[key] for key in ("target", "cpu", "kernels", "capacity", "chunk", "head_dtype")},
        "build_seconds": compiled.seconds,
        "library_bytes": files[0].stat().st_size,
        "files": [path.name for path in files],
        "threads": pool_threads(),
        "bit_exact_vs_onnx": False,
        "check": check_against_onnx(library.session(), ort_session, ids[: chunk + min(3, len(ids) - chunk)]),
    }
    if report["check"]["max_rel_diff"] > LOGIT_TOLERANCE:
        raise RuntimeError(
            f"the TVM decoder library's logits differ from ONNX Runtime's by {report['check']['max_rel_diff']:.3g} "
            f"of their range (tolerance {LOGIT_TOLERANCE}; a backend bug)"
        )
    return library, report


def check_against_onnx(session, ort_session, prompt) -> dict:
    """Logits of `prompt` and of `CHECK_STEPS` greedy tokens (ONNX Runtime's) from the library's session and the
    artifact in ONNX Runtime: the largest difference relative to max |logit|, and where the argmaxes agree."""
    from qcompile.generation import OrtSteps

    ort = OrtSteps(ort_session)
    pairs = [(session.prefill(prompt), ort.prefill(list(prompt)))]
    for _ in range(CHECK_STEPS):
        token = int(np.argmax(pairs[-1][1]))
        pairs.append((session.step(token), ort.step(token)))
    diffs = [float(np.max(np.abs(got - want)) / np.max(np.abs(want))) for got, want in pairs]
    return {
        "calls": len(pairs),
        "prompt_tokens": len(prompt),
        "max_rel_diff": max(diffs),
        "argmax_agreement": sum(int(np.argmax(got) == np.argmax(want)) for got, want in pairs) / len(pairs),
    }


class DecoderScoring:
    """A perplexity runner: logits [B, T, vocab] of token windows, one decode step per token from an empty cache
    (the past in the feeds is the empty one the task builds for ONNX Runtime, so it is ignored)."""

    def __init__(self, library) -> None:
        self.session = library.session()

    def __call__(self, feeds) -> np.ndarray:
        windows = np.asarray(feeds["input_ids"])
        rows = []
        for window in windows:
            self.session.reset()
            rows.append(np.stack([self.session.step(int(token)) for token in window]))
        return np.stack(rows)


def decode_ms(steps, ids, repeats: int = DECODE_REPEATS) -> float:
    """Median wall time (ms) of one decode step of `steps` (a library session or `OrtSteps`) with `ids` in the cache:
    every timed step appends the same next token to the same cache (the library's position and ONNX Runtime's past
    are put back after each)."""
    steps.reset()
    steps.prefill(list(ids))
    token = int(ids[-1])
    times = []
    for _ in range(repeats + 2):  # two warm-up steps
        saved = steps.position if hasattr(steps, "position") else steps.past
        start = time.perf_counter()
        steps.step(token)
        times.append(time.perf_counter() - start)
        if hasattr(steps, "position"):
            steps.position = saved
        else:
            steps.past = saved
    return 1000 * statistics.median(times[2:])
