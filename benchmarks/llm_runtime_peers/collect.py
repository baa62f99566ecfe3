"""Render the runtime-speed records of SmolLM2-135M into benchmarks/results/llm_runtime_smollm2.md.

Reads /work/peers/out/runtime_*.json: one record per runtime/setting, written by the peer scripts of this folder
(rt_common.run_setting) or by any other runtime, e.g. a qcompile TVM row, that writes the same fields. Pure
standard library.

Record schema (JSON object; extra keys are kept but not shown):
  runtime            str    e.g. "llama.cpp", "ONNX Runtime", "qcompile TVM"
  setting            str    e.g. "q4_1", "nbits_acc4", "w4a16"
  prefill_tok_s_512  float  512 / median seconds of one 512-token prefill call (cache emptied before)
  ttft_ms_512        float  median ms from an empty cache to the first generated token id (prefill 512 + argmax)
  decode_tok_s_ctx128, decode_tok_s_ctx512
                     float  1 / median seconds of one decode step with exactly 128 / 512 tokens in the KV cache
                            (>= 32 timed steps after warm-up)
  peak_rss_mb        float  resource.getrusage(RUSAGE_SELF).ru_maxrss / 1024 of the measuring process after the
                            timings (one process per runtime/setting)
  artifact_mb        float  size on disk of what the runtime loads, 10^6 bytes
  perplexity         float  exp(mean NLL) over the first 16 evaluation windows x 512 tokens (llm_peers/common.py)
  cpu                str    lscpu "Model name"
  threads            int    compute threads the runtime was given
  notes              str    how the setting was built or run
optional: weights_mb (float: weight bytes held and read per decoded token, where they differ from artifact_mb,
  e.g. a GGUF dequantized to float32 at load), validation (bool: a short run, not a result), eval_windows,
  command, runtime_version, peak_rss_mb_with_eval, failed (bool) + error (str): a failed record is shown with
  its error.

The bandwidth record (bandwidth.py, runtime_bandwidth_numpy.json) is shown above the table. Records of several
rounds of one setting (run_all.sh ROUNDS: runtime_<peer>_<setting>.r<N>.json) make one row: the median of the
rounds' timings (TIMINGS), the rest from the round that scored the perplexity, the rounds' decode rates in its notes.

Run (any Python 3.11), from /work/main:
  python3 benchmarks/llm_runtime_peers/collect.py [--output PATH] [--records FOLDER]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

OUT = Path("/work/peers/out")
RESULTS = Path(__file__).resolve().parents[1] / "results" / "llm_runtime_smollm2.md"
ORDER = ["llama.cpp", "ONNX Runtime", "ONNX Runtime GenAI", "PyTorch eager (transformers)"]
TIMINGS = ("prefill_tok_s_512", "ttft_ms_512", "decode_tok_s_ctx128", "decode_tok_s_ctx512")
COLUMNS = (
    "| runtime | setting | threads | prefill tok/s (512) | TTFT ms (512) | decode tok/s (ctx 128) |"
    " decode tok/s (ctx 512) | peak RSS MB | artifact MB | weight GB/s at ctx 128 | perplexity | notes |"
)


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def load(folder: Path) -> tuple[dict | None, list[dict]]:
    bandwidth, rows = None, []
    for path in sorted(folder.glob("runtime_*.json")):
        rec = json.loads(path.read_text())
        rec["record"] = path.stem
        if rec.get("setting") == "bandwidth":
            bandwidth = rec
        else:
            rows.append(rec)
    rows = merge_rounds(rows)
    rank = {name: i for i, name in enumerate(ORDER)}
    rows.sort(key=lambda r: (rank.get(r.get("runtime"), len(ORDER)), str(r.get("runtime")), str(r.get("setting"))))
    return bandwidth, rows


def merge_rounds(records: list[dict]) -> list[dict]:
    """One record per (runtime, setting): a setting measured in several rounds gets the median of their timings
    (the other fields from its round with a perplexity, else its first), `rounds` and `round_decode` (the rounds'
    decode tok/s at ctx 128 and 512, in round order)."""
    groups: dict[tuple, list[dict]] = {}
    for rec in sorted(records, key=lambda r: r["record"]):
        groups.setdefault((rec.get("runtime"), rec.get("setting")), []).append(rec)
    merged = []
    for group in groups.values():
        done = [r for r in group if not r.get("failed")]
        if len(group) == 1 or not done:
            merged.append(group[0])
            continue
        base = dict(next((r for r in done if r.get("perplexity") is not None), done[0]))
        for key in TIMINGS:
            values = [r[key] for r in done if r.get(key) is not None]
            base[key] = statistics.median(values) if values else None
        base["rounds"] = len(done)
        base["round_decode"] = [[r.get("decode_tok_s_ctx128"), r.get("decode_tok_s_ctx512")] for r in done]
        merged.append(base)
    return merged


def row(rec: dict) -> str:
    label = f"{rec.get('setting')}" + (" (validation run)" if rec.get("validation") else "")
    head = f"| {rec.get('runtime')} | {label} | {rec.get('threads', '—')} |"
    if rec.get("failed"):
        error = str(rec.get("error", "")).replace("|", "/").replace("\n", " ")[:400]
        return head + f" FAILED | | | | | | | | {error} |"
    effective, weights = None, rec.get("weights_mb") or rec.get("artifact_mb")
    if weights and rec.get("decode_tok_s_ctx128"):
        effective = weights * rec["decode_tok_s_ctx128"] / 1e3
    ppl = fmt(rec.get("perplexity"), 3)
    if rec.get("eval_windows") not in (None, 16):
        ppl += f" ({rec['eval_windows']} windows)"
    notes = str(rec.get("notes", "")).replace("|", "/")
    if rec.get("rounds"):
        decode = ", ".join(f"{fmt(a)} / {fmt(b)}" for a, b in rec["round_decode"])
        notes = f"median of {rec['rounds']} rounds (decode ctx 128 / 512 per round: {decode}); " + notes
    return (
        head + f" {fmt(rec.get('prefill_tok_s_512'))} | {fmt(rec.get('ttft_ms_512'))} |"
        f" {fmt(rec.get('decode_tok_s_ctx128'))} | {fmt(rec.get('decode_tok_s_ctx512'))} |"
        f" {fmt(rec.get('peak_rss_mb'), 0)} | {fmt(rec.get('artifact_mb'))} | {fmt(effective, 2)} | {ppl} | {notes} |"
    )


def render(bandwidth: dict | None, rows: list[dict], folder: Path = OUT) -> str:
    cpus = sorted({str(r.get("cpu")) for r in rows + ([bandwidth] if bandwidth else [])})
    threads = sorted({str(r.get("threads")) for r in rows})
    lines = ["# Runtime speed on SmolLM2-135M (CPU)", ""]
    if any(r.get("validation") for r in rows):
        lines += ["**VALIDATION RUN UNDER LOAD, NOT RESULTS**: short settings on a shared, busy machine.", ""]
    lines += [
        f"- CPU: {', '.join(cpus)} (lscpu model name); threads per runtime: {', '.join(threads)}",
        f"- Rendered: {time.strftime('%Y-%m-%d', time.gmtime())} from {folder}/runtime_*.json"
        " (benchmarks/llm_runtime_peers/collect.py)",
        "- Prefill: one 512-token prompt from an empty cache (median); TTFT: prefill 512 + argmax of its last logits;"
        " decode: median time of one step with exactly 128 / 512 tokens in the KV cache (cache cut back after each"
        " step); peak RSS: ru_maxrss of the measuring process after the timings, one process per row;"
        " perplexity: 16 x 512 Lee evaluation windows (8,192 tokens), llm_peers/common.py nll_sum.",
        *(
            [
                "- Rounds: every setting measured once per round, the rounds one after another; a row with several is"
                " the median of its rounds' timings (this VM's speed drifts by up to 30 % over minutes)."
            ]
            if any(r.get("rounds") for r in rows)
            else []
        ),
        "- Weight GB/s at ctx 128: weights_mb (else artifact_mb) x decode tok/s at ctx 128, the weight bytes streamed"
        " per second if each is read once per token (an upper estimate: an embedding table is only gathered); compare"
        " with the read bandwidth below.",
        "",
    ]
    if bandwidth:
        by1 = bandwidth.get("read_gb_s_1t_by_method", {})
        lines += [
            f"Memory bandwidth (numpy, {bandwidth.get('array_mib')} MiB arrays): copy (read + write)"
            f" {fmt(bandwidth.get('copy_gb_s_1t'))} GB/s with 1 thread, {fmt(bandwidth.get('copy_gb_s_2t'))} GB/s"
            f" with 2; read-only {fmt(bandwidth.get('read_gb_s_1t'))} GB/s with 1 thread,"
            f" {fmt(bandwidth.get('read_gb_s_2t'))} GB/s with 2 (best of {', '.join(by1)}).",
            "",
        ]
    lines += [COLUMNS, "|" + "---|" * COLUMNS.count(" | ") + "---|"]
    lines += [row(r) for r in rows]
    lines += ["", "Commands (from /work/main), one per row:", "", "```"]
    lines += [str(r.get("command", "")) for r in rows if r.get("command")]
    lines += ["```", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--output", type=Path, default=RESULTS)
    ap.add_argument("--records", type=Path, default=OUT, help="folder of runtime_*.json records")
    args = ap.parse_args()
    bandwidth, rows = load(args.records)
    text = render(bandwidth, rows, args.records)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
