"""Cases of category `plugins`: `--plugin FILE.py` that is missing, broken, hostile or valid.

The valid plugin's case also checks (through the harness's listing of the plugins folder) that loading
it writes no `__pycache__` next to it: the harness leaves PYTHONDONTWRITEBYTECODE unset.
"""

from __future__ import annotations

import os
import textwrap

from qcompile.testing.robustness import models
from qcompile.testing.robustness.case import Case, CaseDirs, model_argv, save

__all__ = ["CASES"]

_REGISTER = """\
import qcompile


@qcompile.register_pass({name!r})
class Plugged(qcompile.Pass):
    \"\"\"Does nothing (robustness corpus).\"\"\"

    requires = frozenset()
    establishes = frozenset()
    invalidates = frozenset()
    numerics = qcompile.Numerics.EXACT

    def call(self, model):
        return qcompile.PassResult(model, modified=False, stats={{}})
"""


def _plugin(file_name: str, source: str | None):
    """A builder writing the base model and, unless `source` is None, the plugin file."""

    def build(dirs: CaseDirs) -> None:
        save(models.mlp(), dirs.model)
        if source is not None:
            (dirs.plugins / file_name).write_text(textwrap.dedent(source))

    return build


def _plugin_dir(dirs: CaseDirs) -> None:
    save(models.mlp(), dirs.model)
    (dirs.plugins / "pkgdir").mkdir()
    (dirs.plugins / "pkgdir" / "__init__.py").write_text(_REGISTER.format(name="dirpass"))


def _plugin_fifo(dirs: CaseDirs) -> None:
    save(models.mlp(), dirs.model)
    os.mkfifo(dirs.plugins / "pipe.py")


def _argv(file_name: str, passes: str = "w8a8") -> tuple[str, ...]:
    return model_argv("--plugin", "{plugins}/" + file_name, passes=passes)


CASES = [
    Case(
        "plugin-missing",
        "plugins",
        "error",
        _plugin("nothere.py", None),
        argv=_argv("nothere.py"),
        mentions=("nothere.py",),
    ),
    Case(
        "plugin-syntax-error",
        "plugins",
        "error",
        _plugin("broken.py", "def oops(:\n    pass\n"),
        argv=_argv("broken.py"),
        mentions=("broken.py",),
    ),
    Case(
        "plugin-raises-at-import",
        "plugins",
        "error",
        _plugin("raises.py", "raise RuntimeError('plugin refuses to load')\n"),
        argv=_argv("raises.py"),
        mentions=("raises.py",),
    ),
    Case(
        "plugin-sys-exit",
        "plugins",
        "error",
        _plugin("exits.py", "import sys\nsys.exit(0)\n"),
        argv=_argv("exits.py"),
        mentions=("exits.py",),
        note="SystemExit(0) from a plugin must not end the run as a success",
    ),
    Case(
        "plugin-registers-recipe-name",
        "plugins",
        "error",
        _plugin("dup_recipe.py", _REGISTER.format(name="w8a8")),
        argv=_argv("dup_recipe.py"),
        mentions=("w8a8",),
    ),
    Case(
        "plugin-registers-pass-name",
        "plugins",
        "error",
        _plugin("dup_pass.py", _REGISTER.format(name="quantize")),
        argv=_argv("dup_pass.py"),
        mentions=("quantize",),
    ),
    Case("plugin-is-directory", "plugins", "error", _plugin_dir, argv=_argv("pkgdir"), mentions=("pkgdir",)),
    Case("plugin-is-fifo", "plugins", "error", _plugin_fifo, argv=_argv("pipe.py"), mentions=("pipe.py",), timeout=30),
    Case(
        "plugin-valid-noop-pass",
        "plugins",
        "ok",
        _plugin("mypass.py", _REGISTER.format(name="mypass")),
        argv=_argv("mypass.py", passes="mypass,w8a8"),
        note="and no __pycache__ next to the plugin",
    ),
]
