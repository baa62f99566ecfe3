"""Tests of the Lee background corpus reader and its fetch helper."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from qcompile.errors import DataUnavailableError
from qcompile.zoo.data import lee, package_member
from qcompile.zoo.data.lee import CORPUS_NAME, fetch_lee_corpus, joined_text, load_lee, parse_lee

SYNTHETIC = 'First article . It has two sentences.\nSecond article, "quoted".\n\nThird one.'


def test_parser_one_article_per_line(tmp_path: Path) -> None:
    path = tmp_path / CORPUS_NAME
    path.write_text(SYNTHETIC, encoding="utf-8")
    assert parse_lee(path) == ["First article . It has two sentences.", 'Second article, "quoted".', "Third one."]


def test_missing_corpus_is_data_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCOMPILE_CACHE", str(tmp_path))
    with pytest.raises(DataUnavailableError) as info:
        load_lee()
    message = str(info.value)
    assert str(tmp_path / "data" / CORPUS_NAME) in message and "make data" in message
    assert "python -m qcompile.zoo.data.lee --fetch" in message


def test_load_and_join_read_from_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCOMPILE_CACHE", str(tmp_path))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / CORPUS_NAME).write_text(SYNTHETIC, encoding="utf-8")
    assert len(load_lee()) == 3
    assert joined_text() == 'First article . It has two sentences.\n\nSecond article, "quoted".\n\nThird one.'


def _fake_wheel(path: Path, content: bytes) -> None:
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"gensim/test/test_data/{CORPUS_NAME}", content)
        wheel.writestr("gensim/test/test_data/lee.cor", b"other")
        wheel.writestr("gensim/__init__.py", b"")


def test_fetch_extracts_only_the_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(command: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        _fake_wheel(Path(command[command.index("-d") + 1]) / "gensim-4.4.0-cp311-cp311-linux_x86_64.whl", b"a\nb\n")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(package_member.subprocess, "run", fake_run)
    dest = fetch_lee_corpus(tmp_path / "out")
    assert dest == tmp_path / "out" / CORPUS_NAME
    assert sorted(p.name for p in dest.parent.iterdir()) == [CORPUS_NAME]
    assert dest.read_bytes() == b"a\nb\n"
    assert calls and calls[0][1:-1] == ["-m", "pip", "download", "--no-deps", "gensim==4.4.0", "-d"]
    fetch_lee_corpus(tmp_path / "out")  # present now: pip must not run again
    assert len(calls) == 1


def test_fetch_reports_pip_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_run(command: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found for gensim==4.4.0\n")

    monkeypatch.setattr(package_member.subprocess, "run", failing_run)
    with pytest.raises(DataUnavailableError, match="No matching distribution"):
        fetch_lee_corpus(tmp_path)
    assert not (tmp_path / CORPUS_NAME).exists()


def test_real_corpus() -> None:
    if not lee.lee_path().is_file():
        pytest.skip(f"Lee corpus not in the cache ({lee.lee_path()}); `make data` fetches it")
    articles = load_lee()
    assert len(articles) == 300 and all(a and a == a.strip() for a in articles)
    assert sum(len(a.split()) for a in articles) == 59890
    assert articles[0].startswith("Hundreds of people have been forced to vacate their homes in the Southern Highlands")
