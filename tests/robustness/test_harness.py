"""The harness's classification on synthetic observations (no subprocess): each failure kind is caught."""

from __future__ import annotations

from pathlib import Path

import pytest

from qcompile.testing.robustness.case import Case, Secret, _contains_word, model_argv
from qcompile.testing.robustness.harness import DriverResult, Observation, classify
from qcompile.testing.robustness.snapshot import diff, list_tree


def _case(expect: str = "error", **kwargs) -> Case:
    return Case("synthetic", "file", expect, lambda dirs: None, **kwargs)


def _observe(rc: int | None, stderr: str = "", stdout: str = "", timed_out: bool = False) -> DriverResult:
    return DriverResult(Observation(["x"], rc, stdout.encode(), stderr.encode(), 1.0, timed_out))


@pytest.fixture
def setup(tmp_path: Path):
    case = _case(mentions=("model.onnx",), forbid=("4242",))
    dirs = case.dirs(tmp_path / "root")
    dirs.create()
    (dirs.model_dir / "model.onnx").write_bytes(b"x")
    return case, dirs


def _judge(case, dirs, result, change=lambda dirs: None):
    before, out_before = list_tree(dirs.root, exclude=dirs.out), list_tree(dirs.out)
    change(dirs)
    return classify(case, dirs, result, before, list_tree(dirs.root, exclude=dirs.out), out_before, list_tree(dirs.out))


def test_clean_error(setup) -> None:
    case, dirs = setup
    assert _judge(case, dirs, _observe(2, "qcompile: error: model.onnx: bad\n")) == ("clean-error", "")


@pytest.mark.parametrize(
    ("result", "kind"),
    [
        (_observe(2, "qcompile: error: model.onnx: bad\nmore\n"), "wrong-exit"),
        (_observe(1, "qcompile: error: model.onnx: bad\n"), "wrong-exit"),
        (_observe(0), "success"),
        (_observe(None, timed_out=True), "hang"),
        (_observe(2, "Traceback (most recent call last):\n"), "traceback"),
        (_observe(2, "qcompile: error: bad\n"), "vague-error"),
        (_observe(2, "qcompile: error: model.onnx is 4242 bytes\n"), "vague-error"),
    ],
)
def test_failures(setup, result, kind) -> None:
    case, dirs = setup
    assert _judge(case, dirs, result)[0] == kind


def test_escape_and_partial_output(setup) -> None:
    case, dirs = setup
    ok = _observe(2, "qcompile: error: model.onnx: bad\n")
    assert _judge(case, dirs, ok, lambda d: (d.home / ".cache").mkdir())[0] == "escape"
    assert _judge(case, dirs, ok, lambda d: (d.model_dir / "model.onnx").write_bytes(b"yy"))[0] == "escape"
    assert _judge(case, dirs, ok, lambda d: (d.out / ".qcompile-staging-1").mkdir(parents=True))[0] == "partial-output"


def test_created_parents_are_partial_output(tmp_path: Path) -> None:
    case = _case(out_path="a/b/out")
    dirs = case.dirs(tmp_path / "root")
    dirs.create()
    kind, detail = _judge(case, dirs, _observe(2, "qcompile: error: x\n"), lambda d: d.out.parent.mkdir(parents=True))
    assert kind == "partial-output" and "work/a" in detail


def test_secret_leak_is_escape(setup) -> None:
    case, dirs = setup
    dirs.secret = Secret.plant(dirs.outside / "secret.bin")
    leak = _observe(2, f"qcompile: error: model.onnx holds {dirs.secret.hex}\n")
    assert _judge(case, dirs, leak)[0] == "escape"


def test_helpers(tmp_path: Path) -> None:
    assert _contains_word("dim 7 at", "7") and not _contains_word("dim 17", "7") and not _contains_word("w11", "w1")
    assert model_argv(eval_samples="0")[model_argv().index("--eval-samples") + 1] == "0"
    (tmp_path / "a").write_text("1")
    before = list_tree(tmp_path)
    (tmp_path / "b").write_text("2")
    assert diff(before, list_tree(tmp_path)) == (["b"], [], [])


def test_success_with_leftover_lock_is_partial_output(tmp_path: Path) -> None:
    case = _case(expect="ok")
    dirs = case.dirs(tmp_path / "root")
    dirs.create()

    def outputs(d):
        d.out.mkdir()
        for name in ("report.json", "model.qdq.onnx", ".qcompile.lock"):
            (d.out / name).write_text("{}")

    kind, detail = _judge(case, dirs, _observe(0), outputs)
    assert kind == "partial-output" and ".qcompile.lock" in detail
