"""The robustness corpus through the real CLI, one test per case, plus the Python API on the same inputs
and a determinism check.

All selected corpus cases run once, in parallel (QCOMPILE_ROBUSTNESS_JOBS, default: the CPU count), in a
session fixture; each parametrized test then asserts its own case's outcome. A failure shows the
outcome kind (see qcompile/testing/robustness/harness.py), its detail, the exit code and stderr.
"""

from __future__ import annotations

import collections
import os
import signal
import threading
from pathlib import Path

import pytest

import qcompile
from qcompile.testing.robustness import CASES, CATEGORIES, by_name
from qcompile.testing.robustness.case import SECRET_SIZE, Case, Secret, model_argv, save
from qcompile.testing.robustness.harness import CaseRunner
from qcompile.testing.robustness.models import mlp
from qcompile.testing.robustness.parallel import run_cases

API_CASES = [case for case in CASES if case.api]


class _Outcomes(dict):
    def __repr__(self) -> str:  # pytest prints the fixture value with every failure: keep it short
        return f"<{len(self)} corpus outcomes>"


@pytest.fixture(scope="session")
def corpus_outcomes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """{case name: Outcome} for every corpus case selected in this session, run in parallel once."""
    selected = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "corpus_case" in callspec.params:
            selected.append(callspec.params["corpus_case"])
    cases = [by_name(name) for name in dict.fromkeys(selected)]
    return _Outcomes(run_cases(cases, tmp_path_factory.mktemp("robustness")))


@pytest.mark.parametrize("corpus_case", [case.name for case in CASES])
def test_case(corpus_case: str, corpus_outcomes) -> None:
    outcome = corpus_outcomes[corpus_case]
    if outcome.kind == "skipped":
        pytest.skip(outcome.detail)
    expected = "success" if outcome.expect == "ok" else "clean-error"
    assert outcome.passed, (
        f"{corpus_case} ({outcome.category}, expect {outcome.expect}): {outcome.kind}, expected {expected}\n"
        f"detail: {outcome.detail}\nexit: {outcome.returncode}\nargv: {outcome.argv}\nstderr:\n{outcome.stderr}"
    )


def test_corpus_size_and_categories() -> None:
    counts = collections.Counter(case.category for case in CASES)
    assert len(CASES) >= 60, counts
    assert set(counts) == set(CATEGORIES), counts
    assert len({case.name for case in CASES}) == len(CASES)
    assert {case.expect for case in CASES} == {"error", "ok"}
    assert sum(case.secret for case in CASES) >= 3


def test_required_refusals_are_api_cases() -> None:
    for name in ("graph-cycle", "graph-no-outputs", "graph-unknown-op-in-if"):
        assert by_name(name).api, name


class _Timeout(Exception):
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise _Timeout


@pytest.mark.parametrize("api_case", [case.name for case in API_CASES])
def test_load_refuses(api_case: str, tmp_path: Path) -> None:
    """`qcompile.load` raises InputError with one line naming what is wrong (and never the secret)."""
    case = by_name(api_case)
    if case.restricted and os.geteuid() == 0:
        pytest.skip("file-mode case: root reads a mode-000 file in-process (the CLI case runs it unprivileged)")
    dirs = case.dirs(tmp_path / "case")
    dirs.create()
    if case.secret:
        dirs.secret = Secret.plant(dirs.outside / "secret.bin")
    case.build(dirs)
    assert threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(20)  # a FIFO must not block
    try:
        with pytest.raises(qcompile.InputError) as caught:
            qcompile.load(dirs.model)
    except _Timeout:
        pytest.fail(f"qcompile.load({dirs.model}) did not return within 20 s")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert type(caught.value) is not ValueError
    message = str(caught.value)
    assert message.strip() and "\n" not in message.strip(), repr(message)
    assert not case.mention_problems(message), f"{case.mention_problems(message)}: {message}"
    if dirs.secret is not None:
        assert not dirs.secret.found_in(message.encode()), message
        assert str(SECRET_SIZE) not in message, message


def test_identical_runs_write_identical_artifacts(tmp_path: Path) -> None:
    """Same model, same argv, two output folders (run at the same time): byte-identical model.qdq.onnx."""
    case = Case("determinism", "valid-odd", "ok", lambda dirs: save(mlp(), dirs.model))
    dirs = case.dirs(tmp_path / "case")
    dirs.create()
    case.build(dirs)
    logs = tmp_path / "logs"
    logs.mkdir()
    runner = CaseRunner(case, dirs, logs)
    procs = [runner.start(model_argv(out=str(dirs.work / name))) for name in ("first", "second")]
    observations = [runner.finish(proc, timeout=120) for proc in procs]
    for observation in observations:
        assert observation.returncode == 0, observation.err_text
    first, second = ((dirs.work / name / "model.qdq.onnx").read_bytes() for name in ("first", "second"))
    assert first == second
