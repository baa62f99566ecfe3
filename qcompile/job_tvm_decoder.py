"""The job's TVM step for decoder LLMs (`--target llvm`): compile model.qdq.onnx's decode and prefill steps into
decoder.so, check the library against ONNX Runtime on the artifact, score it, time its decode step.

The check runs one prompt through the library (whole `prefill` chunks and decode steps), the artifact in ONNX Runtime
(one prefill call) and the NumPy reference run of the spec read off the artifact (`backends.tvm.decoder.reference`:
the graph's arithmetic, in its own float order), then `CHECK_STEPS` greedy decode steps fed ONNX Runtime's argmax
tokens, and compares the logits of every call with ONNX Runtime's. They are not bit-identical: the float parts
(RMSNorm, the online transforms, softmax) sum in another order in each, so a per-token quantizer's input can land
on the other side of a rounding boundary, and on a real model such moves add up (SmolLM2 `rotate,w4a8` RTN, the
131-token prompt: the library 6.8 % from ONNX Runtime in relative RMS, the reference 9.7 %). So the reference sets
the scale: the job fails (a backend bug: a misread scale, zero point or transform moves the logits by about their
own size) when a call of the library is farther from ONNX Runtime than twice the reference's distance plus
`RMS_FLOOR`. The integer kernels themselves are tested bit-exactly against their NumPy
references (tests/backends). `tvm.check` reports both distances, the largest difference over max |logit|, the KL
divergence of the library's next-token distribution from ONNX Runtime's, and the argmax agreement.

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

__all__ = ["build_decoder_library", "check_against_onnx", "DecoderScoring", "decode_ms", "RMS_FLOOR", "CHECK_STEPS"]

RMS_FLOOR = 0.01  # added to twice the reference's relative RMS distance from ONNX Runtime (module docstring)
CHECK_STEPS = 4
DECODE_REPEATS = 16


def build_decoder_library(
    target: str, artifact: Path, staging: Path, ort_session, ids, capacity: int, threads, log, head_dtype="float32"
):
    """Compile and save the library into `staging` (a float LM head stored as `head_dtype`), load it and check it
    against `ort_session` on `ids` (module docstring; the reference then rounds the head as the library stores it).
    Returns (the loaded library, the report's `tvm` entry); a CUDA library where no GPU is: (None, the entry with
    `not_run`)."""
    from qcompile.backends.tvm import pool_threads
    from qcompile.backends.tvm.decoder import artifact as library_files
    from qcompile.backends.tvm.decoder.build import stored_head
    from qcompile.backends.tvm.decoder.reference import ReferenceSession

    chunk = min(library_files.DEFAULT_CHUNK, max(1, len(ids) - 1))
    log(f"compiling the decoder's steps with TVM for {target} ({capacity} cache positions, prefill chunks of {chunk})")
    compiled = library_files.compile_decoder(artifact, target, capacity, chunk, head_dtype, threads=threads)
    files = library_files.save(compiled, staging)
    report = {
        **{key: compiled.metadata[key] for key in ("target", "cpu", "kernels", "capacity", "chunk", "head_dtype")},
        "build_seconds": compiled.seconds,
        "library_bytes": files[0].stat().st_size,
        "files": [path.name for path in files],
        "threads": pool_threads(),
        "bit_exact_vs_onnx": False,
    }
    if compiled.metadata["kind"] == "cuda" and not _has_gpu():
        report["not_run"] = "a CUDA library is built here but runs only on a GPU machine: not checked, scored or timed"
        return None, report
    library = library_files.load(staging)
    prompt = ids[: chunk + min(3, len(ids) - chunk)]
    reference = ReferenceSession(stored_head(compiled.decoder, compiled.metadata["head_dtype"]))
    report["check"] = check_against_onnx(library.session(), ort_session, prompt, reference)
    if not report["check"]["within_reference"]:
        raise RuntimeError(
            f"the TVM decoder library's logits differ from ONNX Runtime's by {report['check']['rel_rms_diff']:.3g} "
            f"(relative RMS), the NumPy reference's by {report['check']['reference_rel_rms_diff']:.3g}: a backend bug"
        )
    return library, report


def _has_gpu() -> bool:
    import tvm

    return bool(tvm.cuda(0).exist)


def check_against_onnx(session, ort_session, prompt, reference) -> dict:
    """Logits of `prompt` and of `CHECK_STEPS` greedy tokens (ONNX Runtime's) from the library's session, the artifact
    in ONNX Runtime and the NumPy `reference` session: the distances of the first and the last from ONNX Runtime's
    (module docstring), and where the argmaxes agree."""
    from qcompile.generation import OrtSteps

    ort = OrtSteps(ort_session)
    calls = [(session.prefill(prompt), ort.prefill(list(prompt)), reference.prefill(prompt))]
    for _ in range(CHECK_STEPS):
        token = int(np.argmax(calls[-1][1]))
        calls.append((session.step(token), ort.step(token), reference.step(token)))
    distances = [(_rms(got, want), _rms(exact, want)) for got, want, exact in calls]
    pairs = [(got, want) for got, want, _ in calls]
    return {
        "calls": len(pairs),
        "prompt_tokens": len(prompt),
        "within_reference": all(ours <= 2 * theirs + RMS_FLOOR for ours, theirs in distances),
        "rel_rms_diff": max(ours for ours, _ in distances),
        "reference_rel_rms_diff": max(theirs for _, theirs in distances),
        "max_rel_diff": max(float(np.max(np.abs(got - want)) / np.max(np.abs(want))) for got, want in pairs),
        "kl_divergence": max(_kl(want, got) for got, want in pairs),
        "argmax_agreement": sum(int(np.argmax(got) == np.argmax(want)) for got, want in pairs) / len(pairs),
    }


def _rms(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _kl(reference: np.ndarray, other: np.ndarray) -> float:
    """KL(softmax(reference) ‖ softmax(other)) in nats, in float64."""
    log_p, log_q = (x.astype(np.float64) - x.max() for x in (reference, other))
    log_p, log_q = log_p - np.log(np.exp(log_p).sum()), log_q - np.log(np.exp(log_q).sum())
    return float(np.sum(np.exp(log_p) * (log_p - log_q)))


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
