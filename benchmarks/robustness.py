"""The robustness corpus through the real CLI: how each malformed, hostile or odd input ends. Asserts nothing.

Runs every case of qcompile.testing.robustness (or those named with --only) with the harness and writes
benchmarks/results/robustness.md and .json: counts per category and outcome, then every case with its
outcome, detail and stderr line.

    python benchmarks/robustness.py [--jobs N] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from qcompile.testing.robustness import CASES, CATEGORIES, by_name
from qcompile.testing.robustness.parallel import default_jobs, run_cases
from qcompile.testing.robustness.privileges import mode as privilege_mode

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = [
    ("clean-error", "clean errors"),
    ("success", "successes"),
    ("traceback", "tracebacks"),
    ("escape", "escapes"),
    ("partial-output", "partial outputs"),
    ("hang", "hangs"),
    ("wrong-exit", "wrong exits"),
    ("vague-error", "vague errors"),
    ("skipped", "skipped"),
    ("harness-error", "harness errors"),
]


def _cpu() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown"
    for line in text.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--jobs", type=int, default=default_jobs(), help="cases run at once (default: CPUs, at least 2)"
    )
    parser.add_argument("--only", nargs="*", default=None, help="case names (default: all)")
    args = parser.parse_args()
    cases = [by_name(n) for n in args.only] if args.only else CASES
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="qcompile-robustness-bench-") as folder:
        outcomes = run_cases(
            cases, Path(folder), jobs=args.jobs, on_done=lambda o: print(o.summary()[:200], file=sys.stderr)
        )
    seconds = time.monotonic() - started
    how, why = privilege_mode()

    command = "python benchmarks/robustness.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        "# Robustness corpus: malformed, hostile and unusual inputs through the CLI",
        "",
        f"Command: `{command.strip()}` ({args.jobs} cases at once, {seconds:.0f} s)  ",
        f"Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}  ",
        f"CPU: {_cpu()}  ",
        f"Python {platform.python_version()}; file-mode cases run as: {how}" + (f" ({why})" if why else ""),
        "",
        "Each case runs `python -m qcompile.cli ARGV` in a fresh folder (fresh HOME, TMPDIR, QCOMPILE_CACHE); outcome",
        "kinds are defined in qcompile/testing/robustness/harness.py. "
        "Bad input should end as a clean error (exit 2, one",
        "`qcompile: error:` line naming what is wrong, nothing written), valid input as a success.",
        "",
        "| category | cases | passing | " + " | ".join(label for _, label in COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(COLUMNS),
    ]
    total = Counter()
    for category in CATEGORIES:
        group = [o for o in outcomes.values() if o.category == category]
        if not group:
            continue
        kinds = Counter(o.kind for o in group)
        passing = sum(1 for o in group if o.passed)
        total.update(kinds)
        total["cases"] += len(group)
        total["passing"] += passing
        lines.append(
            f"| {category} | {len(group)} | {passing} | " + " | ".join(str(kinds.get(k, 0)) for k, _ in COLUMNS) + " |"
        )
    lines.append(
        f"| **all** | {total['cases']} | {total['passing']} | "
        + " | ".join(str(total.get(k, 0)) for k, _ in COLUMNS)
        + " |"
    )
    lines += [
        "",
        "## Cases",
        "",
        "| case | category | expect | outcome | pass | exit | detail | stderr (first line) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes.values():
        first = o.stderr.strip().splitlines()[0] if o.stderr.strip() else ""
        mark = "yes" if o.passed else ("-" if o.passed is None else "NO")
        lines.append(
            f"| {o.case} | {o.category} | {o.expect} | {o.kind} | {mark} | {o.returncode} "
            f"| {_cell(o.detail[:300])} | {_cell(first[:300])} |"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "robustness.md").write_text("\n".join(lines) + "\n")
    payload = {
        "command": command.strip(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": _cpu(),
        "jobs": args.jobs,
        "seconds": round(seconds, 1),
        "privileges": [how, why],
        "outcomes": [{k: v for k, v in o.as_dict().items() if k != "stdout"} for o in outcomes.values()],
    }
    (RESULTS / "robustness.json").write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {RESULTS / 'robustness.md'} ({total['passing']}/{total['cases']} passing, {seconds:.0f} s)")


if __name__ == "__main__":
    main()
