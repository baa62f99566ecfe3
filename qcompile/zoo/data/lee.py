"""Lee's background corpus: 300 Australian news articles (about 60k words), one article per line.

The corpus ships inside the ``gensim==4.4.0`` wheel as ``gensim/test/test_data/lee_background.cor``. A set-up
step (``make data``, i.e. ``python -m qcompile.zoo.data.lee --fetch``) extracts that one file into
``<cache>/data/``; at run time `load_lee` only reads it.

`joined_text` joins the articles with ``"\\n\\n"``, as GPTQ joins wikitext's documents for perplexity.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from qcompile.errors import DataUnavailableError
from qcompile.zoo.cache import cache_dir
from qcompile.zoo.data.package_member import fetch_main, fetch_package_member

__all__ = ["CORPUS_NAME", "PACKAGE_SPEC", "fetch_lee_corpus", "joined_text", "lee_path", "load_lee", "parse_lee"]

CORPUS_NAME = "lee_background.cor"
PACKAGE_SPEC = "gensim==4.4.0"
FETCH_COMMAND = "python -m qcompile.zoo.data.lee --fetch"
_MEMBER_SUFFIX = f"test/test_data/{CORPUS_NAME}"


def lee_path() -> Path:
    """Return where the corpus is expected: ``<cache_dir()>/data/lee_background.cor``."""
    return cache_dir() / "data" / CORPUS_NAME


def parse_lee(path: Path) -> list[str]:
    """The articles of a Lee corpus file: one per non-empty line, whitespace-stripped, in file order."""
    with open(path, encoding="utf-8") as stream:
        return [line.strip() for line in stream if line.strip()]


def load_lee() -> list[str]:
    """Load the 300 articles of Lee's background corpus from the cache.

    Raises:
        DataUnavailableError: the corpus has not been fetched into the cache.
    """
    path = lee_path()
    if not path.is_file():
        raise DataUnavailableError(f"Lee corpus not found at {path}: run `{FETCH_COMMAND}` (make data runs it)")
    return parse_lee(path)


def joined_text() -> str:
    """The whole corpus as one text, articles separated by a blank line (``"\\n\\n"``)."""
    return "\n\n".join(load_lee())


def lee_token_ids(name: str, tokenize) -> np.ndarray:
    """The corpus (`joined_text`) as token ids (int64) by `tokenize(text) -> ids`, cached as
    ``<cache_dir()>/tokens/{name}_lee.npy`` (written atomically; redone when the corpus file is newer)."""
    source = lee_path()
    if not source.is_file():
        load_lee()  # the DataUnavailableError naming the fetch command
    path = cache_dir() / "tokens" / f"{name}_lee.npy"
    if path.is_file() and path.stat().st_mtime >= source.stat().st_mtime:
        return np.load(path)
    ids = np.asarray(tokenize(joined_text()), dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial.npy")
    np.save(partial, ids)
    partial.replace(path)
    return ids


def fetch_lee_corpus(dest_dir: Path | str | None = None) -> Path:
    """Download the ``gensim==4.4.0`` wheel with pip and extract the Lee background corpus (a set-up step).

    Does nothing if the corpus is already present.

    Args:
        dest_dir: directory to place the corpus in; default ``<cache_dir()>/data``.

    Returns:
        The path of the corpus file.

    Raises:
        DataUnavailableError: pip could not download the wheel or it lacks the corpus.
    """
    directory = Path(dest_dir) if dest_dir is not None else lee_path().parent
    return fetch_package_member(PACKAGE_SPEC, _MEMBER_SUFFIX, directory / CORPUS_NAME)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m qcompile.zoo.data.lee --fetch [--dest DIR]``."""

    def describe(path: Path) -> str:
        articles = parse_lee(path)
        return f"{len(articles)} articles, {sum(len(a.split()) for a in articles)} words"

    return fetch_main(argv, "python -m qcompile.zoo.data.lee", __doc__.splitlines()[0], fetch_lee_corpus, describe)


if __name__ == "__main__":
    sys.exit(main())
