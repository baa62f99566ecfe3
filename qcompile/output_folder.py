"""The output folder of a run: created, locked, staged into, and committed whole or not at all.

    with OutputFolder(path, force=False) as out:     # creates missing parents, takes the lock
        write files into out.staging
        out.commit(["model.qdq.onnx", "report.json"])  # renames them into place

* **Lock.** A run holds an exclusive `flock` on `OUTDIR/.qcompile.lock` from start to end; a second run
  on the same folder is refused at once (`InputError`). After taking the lock the run checks that the
  lock file is still the one at that path (a finishing run unlinks it), so two runs never both hold it.
* **Earlier outputs.** A folder that already holds qcompile outputs (`OUTPUT_NAMES`) is refused unless
  `force`; with `force`, the outputs of ours that this run did not write are removed after the commit,
  so the folder never shows a report next to another run's artifact. Other files are never touched.
* **Staging.** Files are written in a hidden `.qcompile-staging-*` folder inside OUTDIR and renamed into
  place only by `commit`. On any failure, an exception or a signal turned into one, the staging folder,
  the lock file and every folder this run created (OUTDIR and its new parents) are removed, so a failed
  run leaves the file system as it found it. Staging folders left by a killed run are removed by the
  next run that holds the lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

from qcompile.errors import InputError

__all__ = ["OutputFolder", "OUTPUT_NAMES", "TOKENIZER_FILES", "LOCK_NAME", "STAGING_PREFIX"]

LOCK_NAME = ".qcompile.lock"
STAGING_PREFIX = ".qcompile-staging-"
OUTPUT_NAMES = (
    "model.qdq.onnx",
    "model.int.onnx",
    "model.qdq.onnx.data",
    "model.int.onnx.data",
    "model.so",
    "model.tvm.json",
    "report.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
OUTPUT_NAMES += TOKENIZER_FILES  # decoder-LLM runs save the tokenizer for `qcompile generate`


def _reason(error: OSError) -> str:
    return os.strerror(error.errno) if error.errno else type(error).__name__


class OutputFolder:
    """See the module docstring."""

    def __init__(self, path: str | os.PathLike, force: bool = False) -> None:
        self.path = Path(path)
        self.force = force
        self.created: list[Path] = []
        self.staging: Path | None = None
        self.stale: list[str] = []
        self._lock_fd: int | None = None
        self._committed = False

    def __enter__(self) -> OutputFolder:
        try:
            self._create()
            self._lock()
            self._check_earlier_outputs()
            for leftover in self.path.glob(f"{STAGING_PREFIX}*"):
                shutil.rmtree(leftover, ignore_errors=True)
            self.staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.path))
        except BaseException:
            self._clean_up()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._clean_up()

    def _create(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"output {self.path} exists and is not a directory")
        missing = []
        for folder in (self.path, *self.path.absolute().parents):
            if folder.exists():
                break
            missing.append(folder)
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            except OSError as error:
                raise InputError(f"cannot create output folder {folder}: {_reason(error)}") from None
            self.created.append(folder)
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise InputError(f"output folder {self.path}: permission denied (not writable)")

    def _lock(self) -> None:
        lock_path = self.path / LOCK_NAME
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as error:
            raise InputError(f"output folder {self.path}: cannot create its lock file ({_reason(error)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise InputError(
                    f"output folder {self.path} is in use by another qcompile run; wait for it or choose another -o"
                ) from None
            raise InputError(f"output folder {self.path}: cannot lock it ({_reason(error)})") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_path, follow_symlinks=False))
        except OSError:
            same = False
        if not same:  # the run holding it finished and unlinked it between our open and flock
            os.close(fd)
            raise InputError(
                f"output folder {self.path} is in use by another qcompile run; wait for it or choose another -o"
            )
        self._lock_fd = fd

    def _check_earlier_outputs(self) -> None:
        earlier = [name for name in OUTPUT_NAMES if (self.path / name).exists() or (self.path / name).is_symlink()]
        if earlier and not self.force:
            raise InputError(
                f"output folder {self.path} holds another run's outputs ({', '.join(earlier)}); "
                "pass --force to replace them, or choose another -o"
            )
        self.stale = earlier

    def commit(self, names: list[str]) -> None:
        """Rename the staged `names` into the folder; with `force`, remove the earlier outputs not replaced."""
        assert self.staging is not None, "commit outside the with block"
        for name in names:
            os.replace(self.staging / name, self.path / name)
        for name in self.stale:
            if name not in names:
                (self.path / name).unlink(missing_ok=True)
        self._committed = True

    def _clean_up(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        if self._lock_fd is not None:
            try:
                (self.path / LOCK_NAME).unlink(missing_ok=True)
            finally:
                os.close(self._lock_fd)  # unlink before unlocking: a waiting run then sees a new file
                self._lock_fd = None
        if not self._committed:
            for folder in reversed(self.created):
                try:
                    folder.rmdir()  # only if empty: never removes anything but what this run made
                except OSError:
                    break
        self.created = []
