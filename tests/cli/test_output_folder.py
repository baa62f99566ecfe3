"""`OutputFolder`: created parents removed on failure, one run at a time, earlier outputs refused unless
forced, staged files committed whole, leftovers of a killed run cleaned."""

from __future__ import annotations

from pathlib import Path

import pytest

from qcompile.errors import InputError
from qcompile.output_folder import LOCK_NAME, STAGING_PREFIX, OutputFolder


def test_a_failed_run_removes_the_folders_it_created_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "kept").mkdir()
    target = tmp_path / "kept" / "new1" / "new2" / "out"

    with pytest.raises(RuntimeError), OutputFolder(target) as out:
        (out.staging / "model.qdq.onnx").write_bytes(b"partial")
        raise RuntimeError("a pass broke")

    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    assert list((tmp_path / "kept").iterdir()) == []


def test_a_committed_run_leaves_exactly_its_files(tmp_path: Path) -> None:
    target = tmp_path / "a" / "out"
    with OutputFolder(target) as out:
        (out.staging / "model.qdq.onnx").write_bytes(b"model")
        (out.staging / "report.json").write_text("{}")
        (out.staging / "scratch.bin").write_bytes(b"not committed")
        out.commit(["model.qdq.onnx", "report.json"])

    assert sorted(p.name for p in target.iterdir()) == ["model.qdq.onnx", "report.json"]
    assert (target / "model.qdq.onnx").read_bytes() == b"model"


def test_a_second_run_on_a_locked_folder_is_refused_and_leaves_the_lock_alone(tmp_path: Path) -> None:
    with OutputFolder(tmp_path / "out") as first:
        with pytest.raises(InputError, match="in use by another qcompile run"), OutputFolder(tmp_path / "out"):
            pass
        assert (tmp_path / "out" / LOCK_NAME).exists() and first.staging.is_dir()
    assert not (tmp_path / "out").exists()  # the first run created it and committed nothing


def test_earlier_outputs_are_refused_without_force(tmp_path: Path) -> None:
    out_path = tmp_path / "out"
    out_path.mkdir()
    (out_path / "report.json").write_text("old")
    (out_path / "notes.txt").write_text("mine")

    with (
        pytest.raises(InputError, match=r"holds another run's outputs \(report\.json\); pass --force"),
        OutputFolder(out_path),
    ):
        pass

    assert (out_path / "report.json").read_text() == "old"
    assert sorted(p.name for p in out_path.iterdir()) == ["notes.txt", "report.json"]


def test_force_replaces_earlier_outputs_and_removes_stale_ones_of_ours_only(tmp_path: Path) -> None:
    out_path = tmp_path / "out"
    out_path.mkdir()
    for name, text in (("report.json", "old"), ("model.int.onnx", "stale"), ("notes.txt", "mine")):
        (out_path / name).write_text(text)

    with OutputFolder(out_path, force=True) as out:
        (out.staging / "model.qdq.onnx").write_text("new model")
        (out.staging / "report.json").write_text("new")
        out.commit(["model.qdq.onnx", "report.json"])

    assert sorted(p.name for p in out_path.iterdir()) == ["model.qdq.onnx", "notes.txt", "report.json"]
    assert (out_path / "report.json").read_text() == "new"


def test_a_failed_forced_run_keeps_the_earlier_outputs(tmp_path: Path) -> None:
    out_path = tmp_path / "out"
    out_path.mkdir()
    (out_path / "report.json").write_text("old")

    with pytest.raises(RuntimeError), OutputFolder(out_path, force=True):
        raise RuntimeError("failed")

    assert sorted(p.name for p in out_path.iterdir()) == ["report.json"]


def test_leftovers_of_a_killed_run_are_removed_by_the_next_one(tmp_path: Path) -> None:
    out_path = tmp_path / "out"
    (out_path / f"{STAGING_PREFIX}dead").mkdir(parents=True)
    (out_path / f"{STAGING_PREFIX}dead" / "model.qdq.onnx").write_bytes(b"partial")
    (out_path / LOCK_NAME).write_text("")  # its lock file, no longer locked by anyone

    with OutputFolder(out_path) as out:
        (out.staging / "report.json").write_text("{}")
        out.commit(["report.json"])

    assert sorted(p.name for p in out_path.iterdir()) == ["report.json"]


def test_an_output_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="exists and is not a directory"), OutputFolder(tmp_path / "file"):
        pass
