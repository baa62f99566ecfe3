"""Where a report was produced: the command line, package versions, the CPU, Python and the platform.

A latency ratio means something only next to the machine and the software that measured it, so every
report carries them (`report["environment"]`).
"""

from __future__ import annotations

import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from qcompile.runtime import cpu
from qcompile.runtime.cpu import cpu_name

__all__ = ["environment", "cpu_name", "cpu_flags", "PACKAGES", "CPU_FLAGS"]

PACKAGES = ("qcompile", "onnx", "onnxruntime", "onnx-ir", "numpy", "torch", "apache-tvm", "apache-tvm-ffi")
# The instruction-set extensions that decide which integer kernels run (ORT's and qcompile's TVM ones).
CPU_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile")


def cpu_flags() -> list[str]:
    """The kernel-relevant flags of `CPU_FLAGS` this CPU has (empty where /proc/cpuinfo is absent)."""
    flags = cpu.cpu_flags()
    return [flag for flag in CPU_FLAGS if flag in flags]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(command: list[str] | None = None) -> dict[str, Any]:
    """The report's `environment` block. `command`: the argv to record (default: this process's)."""
    argv = list(sys.argv if command is None else command)
    if argv and Path(argv[0]).name in ("qcompile", "__main__.py", "cli.py"):
        argv[0] = "qcompile"
    return {
        "command": shlex.join(argv),
        "versions": {name: version for name in PACKAGES if (version := _version(name)) is not None},
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
