"""Accuracy of the outlier-suppression / reparameterization passes on the zoo models (issue 3's table).

For every model and pass list: load the float model, run the passes (CheckNumerics on: each
EXACT_IN_REALS pass must reproduce the float outputs, and its error relative to max|output| is
recorded), export QDQ, and score all pass lists together on the same evaluation samples (one loop
over the data, every model's ONNX Runtime session side by side; the float model is the reference
that fits the linear probe). Writes benchmarks/results/outlier_<model>.json and .md. Reports only.

    python benchmarks/outlier_table.py [--models dinov2-s,minilm-l6] [--bits 8,6,4]
        [--extra "rotate,log-softmax,w4a4;..."] [--calib-samples 32] [--eval-samples dinov2-s=500,minilm-l6=1000]
        [--only "w4a4;fp4"] [--tag _fp] [--render: rewrite the .md from the .json]
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

from qcompile import runtime, zoo
from qcompile.errors import InputError
from qcompile.job import _session_runner
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.run import run_passes
from qcompile.runtime import qdq

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("smooth", "repq", "rotate", "noisy")
QUANTIZERS = ("quantize", "fp-quantize")  # the passes whose SQNR the table reports


def pass_lists(bits: list[int], extra: list[str]) -> list[str]:
    lists = ["fp"]
    for b in bits:
        lists.append(f"w{b}a{b}")
        lists += [f"{method},w{b}a{b}" for method in METHODS]
    return lists + [e for e in extra if e not in lists]


def compile_one(entry: zoo.ZooModel, passes: str, calib_samples: int, seed: int) -> tuple[object, list[dict], float]:
    model = entry.load()
    context = PipelineContext(calibration=entry.calibration(calib_samples, seed), seed=seed, progress=False)
    start = time.perf_counter()
    records = run_passes(model, passes, context=context) if passes != "fp" else []
    return model, records, time.perf_counter() - start


def checks(records: list[dict]) -> list[dict]:
    out = []
    for record in records:
        item = {"pass": record["name"], "numerics": str(record["numerics"])}
        if "max_rel_err" in record:
            item["max_rel_err"] = record["max_rel_err"]
        if "sqnr_db" in record:
            item["sqnr_db"] = record["sqnr_db"]
        out.append(item)
    return out


def table(model: str, metric: str, rows: list[dict]) -> str:
    fp = next(r["score"] for r in rows if r["passes"] == "fp")
    lines = [
        f"| passes | {metric} | drop from FP "
        "| equivalence error (max \\|Δ\\| / max \\|out\\|, per EXACT_IN_REALS pass) "
        "| output SQNR after quantize (dB) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        if row.get("error"):
            lines.append(f"| `{row['passes']}` | - | - | failed: {row['error']} | - |")
            continue
        eq = ", ".join(
            f"{c['pass']} {c['max_rel_err']:.1e}" if "max_rel_err" in c else f"{c['pass']} (no change)"
            for c in row["checks"]
            if c["numerics"] == "EXACT_IN_REALS"
        )
        sqnr = [c["sqnr_db"] for c in row["checks"] if c["pass"] in QUANTIZERS and "sqnr_db" in c]
        lines.append(
            f"| `{row['passes']}` | {row['score']:.2f} | {fp - row['score']:+.2f} | {eq or '-'} "
            f"| {f'{sqnr[-1]:.1f}' if sqnr else '-'} |"
        )
    return f"### {model}\n\n" + "\n".join(lines) + "\n"


def write_markdown(name: str, result: dict, args: argparse.Namespace) -> str:
    """benchmarks/results/outlier_<name><tag>.md from the run's `result` (what the .json holds); returns the table."""
    text = table(name, result["metric"], result["rows"])
    options = "".join(
        f" --{flag} {shlex.quote(value)}" for flag, value in (("only", args.only), ("tag", args.tag)) if value
    )
    header = (
        f"Produced by `python benchmarks/outlier_table.py --models {name}{options}` "
        f"({result['calib_samples']} calibration samples, "
        f"{result['eval_samples']} evaluation samples, seed {result['seed']}).\n\n"
    )
    (RESULTS / f"outlier_{name}{args.tag}.md").write_text(header + text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="dinov2-s,minilm-l6")
    parser.add_argument("--bits", default="8,6,4")
    parser.add_argument("--extra", default="", help="more pass lists, ';'-separated")
    parser.add_argument("--only", default="", help="run just these pass lists (';'-separated) instead")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--eval-samples", default="dinov2-s=500,minilm-l6=1000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="")
    parser.add_argument("--render", action="store_true", help="rewrite the .md tables from the .json, run nothing")
    args = parser.parse_args()
    if args.render:
        for name in args.models.split(","):
            result = json.loads((RESULTS / f"outlier_{name}{args.tag}.json").read_text())
            print(write_markdown(name, result, args))
        return 0
    eval_samples = {k: int(v) for k, v in (item.split("=") for item in args.eval_samples.split(","))}
    extra = [e.strip() for e in args.extra.split(";") if e.strip()]
    lists = (
        ["fp", *[e.strip() for e in args.only.split(";") if e.strip()]]
        if args.only
        else pass_lists([int(b) for b in args.bits.split(",")], extra)
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        entry = zoo.get(name)
        sessions, rows = {}, []
        for passes in lists:
            try:
                model, records, seconds = compile_one(entry, passes, args.calib_samples, args.seed)
            except InputError as error:  # an invalid pass list is reported in the table, not fatal
                print(f"[{name}] {passes}: {error}", file=sys.stderr, flush=True)
                rows.append({"passes": passes, "error": str(error), "checks": []})
                continue
            print(f"[{name}] {passes}: compiled in {seconds:.0f} s", file=sys.stderr, flush=True)
            sessions[passes] = runtime.make_session(qdq.to_qdq(model), threads=2)
            rows.append({"passes": passes, "compile_seconds": seconds, "checks": checks(records)})
        runners = {passes: _session_runner(session) for passes, session in sessions.items()}
        scores = entry.evaluate(runners, eval_samples[name], args.seed, progress=True)
        metric = entry.metric_name
        for row in rows:
            row["score"] = scores[row["passes"]][metric] if "error" not in row else None
        result = {
            "model": f"zoo:{name}",
            "metric": metric,
            "eval_samples": eval_samples[name],
            "calib_samples": args.calib_samples,
            "seed": args.seed,
            "machine": platform.processor() or platform.machine(),
            "rows": rows,
        }
        stem = f"outlier_{name}{args.tag}"
        (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
        print(write_markdown(name, result, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
