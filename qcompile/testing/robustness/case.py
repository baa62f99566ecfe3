"""One corpus case: what it builds, how the CLI is called on it, and what a correct outcome is.

A case runs in a fresh root folder laid out as

    ROOT/model/     the model's folder (`{model}` is ROOT/model/model.onnx unless the case says otherwise)
    ROOT/outside/   files the model must never reach (the planted secret of security cases)
    ROOT/plugins/   plugin files
    ROOT/work/      the CLI's working directory; OUT is ROOT/work/out unless the case says otherwise
    ROOT/home, ROOT/tmp, ROOT/cache    HOME, TMPDIR and QCOMPILE_CACHE of the run

The argv may use the placeholders {model}, {out}, {root}, {work}, {model_dir}, {outside}, {plugins}.
"""

from __future__ import annotations

import dataclasses
import os
import secrets as _secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

__all__ = [
    "CATEGORIES",
    "QUICK",
    "SECRET_SIZE",
    "Case",
    "CaseDirs",
    "Secret",
    "model_argv",
    "save",
    "chmod_tree",
]

CATEGORIES = ("file", "graph", "external-data", "cli-options", "plugins", "signals", "concurrency", "valid-odd")
QUICK = ("--calib-samples", "4", "--eval-samples", "4", "--no-baselines", "--quiet")
SECRET_SIZE = 4242  # a distinctive number: it must not show up in any message


def model_argv(
    *extra: str, passes: str = "w8a8", model: str = "{model}", out: str = "{out}", **overrides: str
) -> tuple[str, ...]:
    """`MODEL --passes PASSES -o OUT` + the quick sample options + `extra`.

    `overrides` replace a quick option's value (`eval_samples="0"` → `--eval-samples 0`)."""
    quick = list(QUICK)
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-")
        quick[quick.index(flag) + 1] = value
    return (model, "--passes", passes, "-o", out, *quick, *extra)


@dataclasses.dataclass(frozen=True)
class Secret:
    """A file of SECRET_SIZE bytes: 64 random bytes, their hex text, then random filler."""

    path: Path
    raw: bytes
    hex: str

    @classmethod
    def plant(cls, path: Path) -> Secret:
        raw = _secrets.token_bytes(64)
        text = raw.hex()
        body = raw + text.encode() + _secrets.token_bytes(SECRET_SIZE - len(raw) - len(text))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        return cls(path, raw, text)

    def found_in(self, data: bytes) -> bool:
        return self.raw in data or self.hex.encode() in data or self.hex.upper().encode() in data


@dataclasses.dataclass
class CaseDirs:
    """The folders of one case run, handed to the case's builder."""

    root: Path
    secret: Secret | None = None
    model_path: str = "model/model.onnx"
    out_path: str = "out"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def outside(self) -> Path:
        return self.root / "outside"

    @property
    def plugins(self) -> Path:
        return self.root / "plugins"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def model(self) -> Path:
        return self.root / self.model_path

    @property
    def out(self) -> Path:
        return self.work / self.out_path

    def create(self) -> None:
        for folder in (self.model_dir, self.outside, self.plugins, self.work, self.home, self.tmp, self.cache):
            folder.mkdir(parents=True, exist_ok=True)

    def placeholders(self) -> dict[str, str]:
        return {
            "model": str(self.model),
            "out": str(self.out),
            "root": str(self.root),
            "work": str(self.work),
            "model_dir": str(self.model_dir),
            "outside": str(self.outside),
            "plugins": str(self.plugins),
        }


def save(proto: onnx.ModelProto, path: Path) -> Path:
    """Write `proto` as is (no checks), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(proto.SerializeToString())
    return path


Mention = str | tuple[str, ...]  # a substring, or alternatives of which one must appear


@dataclasses.dataclass(frozen=True)
class Case:
    """One input and its expected outcome.

    - `expect`: "error" (bad input: exit `exit_codes`, one stderr line starting `stderr_prefix`, OUT as
      before) or "ok" (exit 0, a loadable artifact and report.json, nothing else in OUT but `out_keep`).
    - `mentions`: substrings (or tuples of alternatives) the error line must contain: names of the file,
      node, op, tensor or option concerned. `forbid`: substrings it must not contain (e.g. a file size).
    - `secret`: plant a Secret in ROOT/outside/secret.bin before building; it must not leak anywhere.
    - `restricted`: the case relies on file modes (000 / 555), which root ignores; run it unprivileged.
    - `api`: `qcompile.load(model)` must raise `InputError` on this input (a malformed model, not just one
      the CLI cannot run).
    - `driver`: for signal and concurrency cases, a function `driver(runner) -> Observation` that starts
      and signals the processes itself (see harness.CaseRunner).
    - `out_keep` / `out_gone`: for "ok" cases, files of OUT that must survive unchanged / must be removed.
    """

    name: str
    category: str
    expect: str
    build: Callable[[CaseDirs], Any]
    argv: tuple[str, ...] = model_argv()
    mentions: tuple[Mention, ...] = ()
    forbid: tuple[str, ...] = ()
    secret: bool = False
    restricted: bool = False
    api: bool = False
    model_path: str = "model/model.onnx"
    out_path: str = "out"
    timeout: float = 120.0
    driver: Callable[..., Any] | None = None
    exit_codes: tuple[int, ...] = (2,)
    stderr_prefix: str = "qcompile: error: "
    out_keep: tuple[str, ...] = ()
    out_gone: tuple[str, ...] = ()
    note: str = ""

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"case {self.name}: unknown category {self.category!r}")
        if self.expect not in ("error", "ok"):
            raise ValueError(f"case {self.name}: expect must be 'error' or 'ok'")

    def dirs(self, root: Path) -> CaseDirs:
        return CaseDirs(Path(root), model_path=self.model_path, out_path=self.out_path)

    def format_argv(self, dirs: CaseDirs) -> list[str]:
        values = dirs.placeholders()
        return [arg.format(**values) if "{" in arg else arg for arg in self.argv]

    def mention_problems(self, line: str) -> list[str]:
        """What the error line lacks or wrongly contains, per `mentions` and `forbid`."""
        problems = []
        for mention in self.mentions:
            options = (mention,) if isinstance(mention, str) else mention
            if not any(_contains_word(line, option) for option in options):
                problems.append("does not name " + " or ".join(repr(o) for o in options))
        for word in self.forbid:
            if _contains_word(line, word):
                problems.append(f"reveals {word!r}")
        return problems


def _contains_word(line: str, word: str) -> bool:
    """`word` in `line`, not as part of a longer number or name (letters or digits on either side)."""
    start = line.find(word)
    while start >= 0:
        before = line[start - 1] if start > 0 else " "
        after = line[start + len(word)] if start + len(word) < len(line) else " "
        if not (before.isalnum() or after.isalnum()):
            return True
        start = line.find(word, start + 1)
    return False


def chmod_tree(path: Path, mode_dirs: int = 0o755, mode_files: int = 0o644) -> None:
    """Make a tree removable again after a case changed modes inside it."""
    for folder, dirs, files in os.walk(path):
        for name in dirs:
            p = os.path.join(folder, name)
            if not os.path.islink(p):
                os.chmod(p, mode_dirs)
        for name in files:
            p = os.path.join(folder, name)
            if not os.path.islink(p) and os.path.isfile(p):
                os.chmod(p, mode_files)
