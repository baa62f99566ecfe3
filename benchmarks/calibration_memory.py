"""Calibration memory: peak RSS while calibrating the same model on N1 and N2 samples.

Each size runs in its own process (so no allocation from one run is counted in the other); the
figure is the maximum resident set size sampled every 10 ms during the calibrate pass (the pass's
`peak_rss_mb` statistic), next to the process's lifetime `ru_maxrss`. Streaming calibration keeps only
fixed-size statistics, so the two figures should be close whatever N is.

    python benchmarks/calibration_memory.py [--model dinov2-s] [--samples 32,512] [--observer minmax]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

_CHILD = """
import json, resource, sys
from qcompile import zoo
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.run import run_passes
entry = zoo.get(sys.argv[1]); samples = int(sys.argv[2]); observer = sys.argv[3]
model = entry.load()
data = entry.calibration(samples, seed=0)
records = run_passes(model, f"calibrate:observer={observer}",
                     context=PipelineContext(calibration=data, progress=False), check_numerics=False)
stats = records[0]["stats"]
print(json.dumps({"samples": samples, "peak_rss_mb": stats["peak_rss_mb"], "seconds": records[0]["seconds"],
                  "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dinov2-s")
    parser.add_argument("--samples", default="32,512")
    parser.add_argument("--observer", default="minmax")
    args = parser.parse_args()
    rows = []
    for samples in (int(s) for s in args.samples.split(",")):
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, args.model, str(samples), args.observer],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    ratio = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    result = {"model": args.model, "observer": args.observer, "runs": rows, "peak_ratio_last_to_first": ratio}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"calibration_memory_{args.model}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Calibration memory ({args.model}, observer {args.observer}, batch 8)\n",
        f"`python benchmarks/calibration_memory.py --model {args.model} --samples {args.samples} "
        f"--observer {args.observer}`\n",
        "| samples | calibrate peak RSS MB | process ru_maxrss MB | seconds |",
        "|---|---|---|---|",
        *[f"| {r['samples']} | {r['peak_rss_mb']:.0f} | {r['ru_maxrss_mb']:.0f} | {r['seconds']:.1f} |" for r in rows],
        f"\npeak RSS ratio {rows[-1]['samples']} vs {rows[0]['samples']} samples: {ratio:.3f}",
    ]
    (RESULTS / f"calibration_memory_{args.model}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
