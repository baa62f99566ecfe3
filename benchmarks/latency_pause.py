"""Why `measure_latency` pauses before each block: ONNX Runtime sessions timed in alternating blocks, with
0, 20, 100 and 500 ms pauses before each block, on one zoo model in one process.

Each session's intra-op threads spin for a while after a run; a session timed right after another one
shares the cores with those spinning threads, and dropping the first run of each block does not hide it
when runs are short (MiniLM at 36 tokens: a few ms). With a long enough pause every session times as it
does alone. `measure_latency` with each pause: medians of 8 rounds of blocks of 4 runs (first dropped,
3 warm-ups), 2 threads. Reports; asserts nothing.
Writes benchmarks/results/latency_pause.md.

    python benchmarks/latency_pause.py [--model minilm-l6] [--pauses 0,0.02,0.1,0.5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from qcompile.runtime.cpu import cpu_name

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--pauses", default="0,0.02,0.1,0.5")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from qcompile import runtime, zoo
    from qcompile.backends.onnx import ort_baselines
    from qcompile.ir import model_to_bytes
    from qcompile.job import model_from_bytes
    from qcompile.report.latency import measure_latency

    entry = zoo.get(args.model)
    float_bytes = model_to_bytes(entry.load())
    feeds = entry.latency_feeds()
    scratch = Path(tempfile.mkdtemp(prefix="latency-pause-"))
    sessions = {
        "ORT FP32": runtime.make_session(float_bytes, threads=args.threads),
        "ORT INT8 static": runtime.make_session(
            ort_baselines.ort_quantize_static(model_from_bytes(float_bytes), entry.calibration(32, 0), scratch / "s"),
            threads=args.threads,
        ),
        "ORT INT8 dynamic": runtime.make_session(
            ort_baselines.ort_quantize_dynamic(model_from_bytes(float_bytes), scratch / "d"), threads=args.threads
        ),
    }
    runners = {label: (lambda session=session: runtime.run(session, feeds)) for label, session in sessions.items()}
    rows = []
    for pause in (float(p) for p in args.pauses.split(",")):
        latency = measure_latency(runners, rounds=24, block=4, pause=pause)  # 8 rounds of blocks of 4
        rows.append(f"| {pause * 1e3:.0f} | " + " | ".join(f"{latency[label]:.2f}" for label in sessions) + " |")
        print(rows[-1], flush=True)
    lines = [
        "# Latency of alternating sessions vs the pause before each block",
        "",
        f"Produced by `python benchmarks/latency_pause.py --model {args.model} --pauses {args.pauses}` "
        f"on {cpu_name()}; {args.threads} threads, batch 1,",
        "medians of 8 rounds × blocks of 4 runs (first dropped), one process.",
        "",
        "| pause ms | " + " | ".join(sessions) + " |",
        "|---|" + "---|" * len(sessions),
        *rows,
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latency_pause.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
