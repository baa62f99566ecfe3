"""The layers the folders draw are the real ones: nothing in qcompile's core or in passes/ imports
`qcompile.backends`, and backends/ takes nothing from passes/.

Core executes models only through `qcompile.runtime`. The application layer composes core and backends
and may import both: the CLI (`qcompile/cli.py`), the job it runs (`qcompile/job.py`, and its TVM step for
decoders, `qcompile/job_tvm_decoder.py`), generation with a run's folder (`qcompile/folder_generation.py`), and the
test helpers (`qcompile/testing/`, which hold reference cases for backend kernels).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APPLICATION = {ROOT / "qcompile" / name for name in ("cli.py", "job.py", "job_tvm_decoder.py", "folder_generation.py")}


def _imported_modules(path: Path) -> set[str]:
    """Absolute module names imported by `path`, including `importlib.import_module("...")` literals."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def _sources(*folders: str, exclude: set[Path] = frozenset(), exclude_dirs: tuple[str, ...] = ()) -> list[Path]:
    files = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path in exclude or any(part in exclude_dirs for part in path.relative_to(ROOT).parts):
                continue
            files.append(path)
    return files


CORE_AND_PASSES = _sources("qcompile", "passes", exclude=APPLICATION, exclude_dirs=("testing",))
BACKENDS = _sources("backends")


@pytest.mark.parametrize("path", CORE_AND_PASSES, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_and_passes_never_import_backends(path: Path) -> None:
    offending = sorted(
        name for name in _imported_modules(path) if name == "qcompile.backends" or name.startswith("qcompile.backends.")
    )
    assert not offending, f"{path.relative_to(ROOT)} imports {offending}: execute models through qcompile.runtime"


@pytest.mark.parametrize("path", BACKENDS, ids=lambda p: str(p.relative_to(ROOT)))
def test_backends_take_nothing_from_passes(path: Path) -> None:
    offending = sorted(name for name in _imported_modules(path) if name.startswith("qcompile.passes"))
    assert not offending, f"{path.relative_to(ROOT)} imports {offending}: shared contracts live in qcompile.ir"


def test_the_scan_sees_an_offending_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\nfrom qcompile.backends.onnx import export\ndef f():\n"
        "    import importlib\n    return importlib.import_module('qcompile.backends.tvm')\n"
    )
    assert {"qcompile.backends.onnx", "qcompile.backends.tvm"} <= _imported_modules(sample)
    assert len(CORE_AND_PASSES) > 50 and len(BACKENDS) > 10


def test_import_qcompile_exposes_backends_and_runtime() -> None:
    import qcompile

    assert qcompile.backends.onnx.export is not None
    assert qcompile.runtime.make_session is not None
