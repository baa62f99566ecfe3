"""Cases of categories `signals` and `concurrency`: processes interrupted, terminated or racing for OUT.

Each case has a driver that starts the CLI itself (through the harness's CaseRunner) and times its
signals off what the run leaves in OUT: a staging folder `.qcompile-staging-*` or the lock
`.qcompile.lock`. A long run is the base model with `--eval-samples LONG` (about 4 s of evaluation on one core; the
CLI allows at most 100000 random samples).
"""

from __future__ import annotations

import signal
import time

from qcompile.testing.robustness import models
from qcompile.testing.robustness.case import Case, CaseDirs, model_argv, save
from qcompile.testing.robustness.harness import LOCK_NAME, CaseRunner, DriverResult, kill

__all__ = ["CASES", "LONG"]

LONG = "100000"
_LONG_ARGV = model_argv(eval_samples=LONG)
_WAIT = 60.0  # for a run to show up in OUT


def _model(dirs: CaseDirs) -> None:
    save(models.mlp(), dirs.model)


def _signal_mid_run(sig: int):
    def drive(runner: CaseRunner) -> DriverResult:
        proc = runner.start(_LONG_ARGV)
        problems = []
        if not runner.wait_for(lambda: bool(runner.out_markers()), proc, _WAIT):
            problems.append(("wrong-exit", "the run never showed a staging folder or lock in OUT to signal it at"))
        else:
            time.sleep(0.3)
        if proc.poll() is None:
            proc.send_signal(sig)
        elif not problems:
            problems.append(("wrong-exit", "the run ended before it could be signalled"))
        return DriverResult(runner.finish(proc, timeout=60), problems=problems)

    return drive


def _signal_at_start(sig: int, delay: float):
    def drive(runner: CaseRunner) -> DriverResult:
        proc = runner.start()
        time.sleep(delay)
        problems = [] if proc.poll() is None else [("wrong-exit", f"the process ended within {delay} s")]
        if proc.poll() is None:
            proc.send_signal(sig)
        return DriverResult(runner.finish(proc, timeout=60), problems=problems)

    return drive


def _second_run_refused(runner: CaseRunner) -> DriverResult:
    first = runner.start(_LONG_ARGV)
    lock = runner.dirs.out / LOCK_NAME
    problems = []
    if not runner.wait_for(lock.exists, first, _WAIT):
        # start B anyway once A shows any sign of work, to see what two unlocked runs do
        runner.wait_for(lambda: bool(runner.out_markers()), first, 1.0)
        note = "run A never held OUT/.qcompile.lock"
    else:
        note = ""
    second = runner.run(model_argv("--seed", "1"), timeout=60)
    first_done = runner.finish(first, timeout=180)
    if first_done.returncode != 0:
        tail = (first_done.err_text.strip().splitlines() or [""])[-1][:200]
        problems.append(("wrong-exit", f"run A (holding OUT) failed with exit {first_done.returncode}: {tail}"))

    def a_outputs(report: dict) -> str | None:
        if str(report.get("eval_samples")) != LONG or report.get("seed") not in (0, None):
            return (
                f"OUT holds another run's report (eval_samples={report.get('eval_samples')}, seed={report.get('seed')})"
            )
        return None

    if note and second.returncode == 0:
        problems.append(("wrong-exit", f"{note}; run B on the same OUT exited 0"))
    return DriverResult(second, [first_done], problems, out_check="artifact", report_check=a_outputs)


def _after_kill(runner: CaseRunner) -> DriverResult:
    first = runner.start(_LONG_ARGV)
    problems = []
    if not runner.wait_for(lambda: bool(runner.out_markers()), first, _WAIT):
        problems.append(("wrong-exit", "run A never showed a staging folder or lock in OUT"))
    kill(first)
    second = runner.run(timeout=120)
    return DriverResult(second, [], problems)


def _stale_lock(dirs: CaseDirs) -> None:
    _model(dirs)
    dirs.out.mkdir()
    (dirs.out / LOCK_NAME).write_text("")  # as a SIGKILLed run would leave it


_SIG = "qcompile: "

CASES = [
    Case(
        "signal-sigterm-mid-run",
        "signals",
        "error",
        _model,
        driver=_signal_mid_run(signal.SIGTERM),
        exit_codes=(143,),
        stderr_prefix=_SIG,
        note="SIGTERM once OUT shows staging or lock: one line, exit 143, nothing left",
    ),
    Case(
        "signal-sigint-mid-run",
        "signals",
        "error",
        _model,
        driver=_signal_mid_run(signal.SIGINT),
        exit_codes=(130,),
        stderr_prefix=_SIG,
    ),
    Case(
        "signal-sigint-during-imports",
        "signals",
        "error",
        _model,
        driver=_signal_at_start(signal.SIGINT, 0.15),
        exit_codes=(130,),
        stderr_prefix=_SIG,
        note="SIGINT 0.15 s after start",
    ),
    Case(
        "concurrency-second-run-same-out",
        "concurrency",
        "error",
        _model,
        driver=_second_run_refused,
        out_path="shared-out",
        mentions=(("another", "lock", LOCK_NAME, "in use", "running", "busy"),),
        note="B starts while A holds OUT/.qcompile.lock: B exit 2; A succeeds; OUT holds A's outputs only",
    ),
    Case(
        "concurrency-after-killed-run",
        "concurrency",
        "ok",
        _model,
        driver=_after_kill,
        note="A is SIGKILLed mid-run; the next run on OUT succeeds and leaves no staging or lock of A's",
    ),
    Case(
        "concurrency-stale-lock-file",
        "concurrency",
        "ok",
        _stale_lock,
        note="OUT/.qcompile.lock left by a dead run must not block (nor remain)",
    ),
]
