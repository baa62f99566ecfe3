"""What the running CPU is: its model name and instruction-set flags, from Linux's /proc/cpuinfo.

Which integer kernels are exact and fast depends on the flags (VNNI, AMX, AVX2), and every measurement
names the CPU; both read the first processor's entry. Where /proc/cpuinfo cannot be read (other systems)
no flags are known and callers keep their portable choice.
"""

from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["cpuinfo_field", "cpu_flags", "cpu_name", "CPUINFO"]

CPUINFO = Path("/proc/cpuinfo")


def cpuinfo_field(field: str, cpuinfo: str | Path | None = None) -> str | None:
    """The value of `field` in the first processor's entry of `cpuinfo` (default `CPUINFO`); None when absent
    or unreadable."""
    try:
        text = Path(CPUINFO if cpuinfo is None else cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == field:
            return value.strip()
    return None


def cpu_flags(cpuinfo: str | Path | None = None) -> frozenset[str]:
    """The CPU's flags (empty when they cannot be read)."""
    return frozenset((cpuinfo_field("flags", cpuinfo) or "").split())


def cpu_name(cpuinfo: str | Path | None = None) -> str:
    """The CPU's model name as the kernel reports it, else what `platform` knows."""
    return cpuinfo_field("model name", cpuinfo) or platform.processor() or platform.machine() or "unknown CPU"
