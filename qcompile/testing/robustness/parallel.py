"""Running many cases at once: each case is a subprocess, so threads are enough to keep the cores busy.

Signal and concurrency cases go first: they are the longest and their timing is driven by what the run
leaves in OUT, not by wall-clock guesses, so sharing the machine only makes them slower.

The CLI keeps a signal that its parent ignores ignored (as `nohup` users expect), and a non-interactive
shell starts background jobs with SIGINT ignored. So that the SIGINT cases test the CLI as a terminal
starts it wherever the corpus itself was started, `run_cases` gives SIGINT its default action first
(children then start with it).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from qcompile.testing.robustness.case import Case
from qcompile.testing.robustness.harness import Outcome, run_case

__all__ = ["default_jobs", "run_cases"]


def default_jobs() -> int:
    """QCOMPILE_ROBUSTNESS_JOBS, else the number of CPUs this process may use (at least 2)."""
    if os.environ.get("QCOMPILE_ROBUSTNESS_JOBS"):
        return max(1, int(os.environ["QCOMPILE_ROBUSTNESS_JOBS"]))
    return max(2, len(os.sched_getaffinity(0)))


def run_cases(
    cases: Iterable[Case], parent: Path, jobs: int | None = None, on_done: Callable[[Outcome], None] | None = None
) -> dict[str, Outcome]:
    """Run every case (each in its own folder under `parent`); returns {name: outcome}."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the CLI children start with SIGINT's default
    cases = list(cases)
    ordered = [c for c in cases if c.driver is not None] + [c for c in cases if c.driver is None]
    outcomes: dict[str, Outcome] = {}

    def one(case: Case) -> Outcome:
        try:
            outcome = run_case(case, parent)
        except Exception as error:  # noqa: BLE001 - a corpus bug must not hide the other cases
            outcome = Outcome(
                case.name,
                case.category,
                case.expect,
                "harness-error",
                False,
                f"{type(error).__name__}: {error}",
                None,
                "",
                "",
                0.0,
                [],
            )
        if on_done is not None:
            on_done(outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=jobs or default_jobs()) as pool:
        for outcome in pool.map(one, ordered):
            outcomes[outcome.case] = outcome
    return {case.name: outcomes[case.name] for case in cases}
