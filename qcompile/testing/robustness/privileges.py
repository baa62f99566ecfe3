"""Running a case without root's power to ignore file modes.

Cases built on file modes (a model file of mode 000, an output parent of mode 555) mean nothing to root,
which reads and writes regardless. When the harness runs as root, such a case's process runs as one of:

1. `nobody` (uid/gid 65534, no supplementary groups), if that user can start the interpreter and import
   qcompile (the venv and the checkout must be world-readable and every folder above them traversable);
   the case folder is then chowned to it;
2. root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (dropped from the bounding and inheritable sets
   before exec, so the interpreter never has them): root then obeys file modes like any owner;
3. neither works: the case is skipped, with the reason.

`mode()` probes once and returns (how, reason).
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["NOBODY", "DESCRIPTIONS", "mode", "popen_options", "chown_tree"]

NOBODY = 65534
DESCRIPTIONS = {
    "self": "this process's user",
    "nobody": "uid/gid 65534",
    "nocaps": "root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH",
}
_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2
_PR_CAPBSET_DROP = 24
_SETPRIV_ARGS = [
    "--bounding-set",
    "-dac_override,-dac_read_search",
    "--inh-caps",
    "-dac_override,-dac_read_search",
    "--",
]


def _drop_dac_capabilities() -> None:  # runs in the child between fork and exec (fallback without setpriv)
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    mask = ~((1 << _CAP_DAC_OVERRIDE) | (1 << _CAP_DAC_READ_SEARCH)) & 0xFFFFFFFF
    data[0].inheritable &= mask
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def popen_options(how: str, argv: list[str]) -> tuple[list[str], dict]:
    """(argv, extra Popen keyword arguments) that run `argv` the way `how` says."""
    if how == "nobody":
        return argv, {"user": NOBODY, "group": NOBODY, "extra_groups": []}
    if how == "nocaps":
        setpriv = shutil.which("setpriv")
        if setpriv:
            return [setpriv, *_SETPRIV_ARGS, *argv], {}
        return argv, {"preexec_fn": _drop_dac_capabilities}
    return argv, {}


def chown_tree(root: Path, uid: int = NOBODY, gid: int = NOBODY) -> None:
    os.lchown(root, uid, gid)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            os.lchown(os.path.join(folder, name), uid, gid)


_PROBE = (
    "import sys, qcompile.cli\ntry:\n    open(sys.argv[1], 'rb').close()\nexcept PermissionError:\n"
    "    sys.exit(0)\nsys.exit(3)\n"
)


def _probe(how: str) -> str | None:
    """None if `how` can run qcompile and is refused a mode-000 file; else why not."""
    with tempfile.TemporaryDirectory(prefix="qcompile-privprobe-") as folder:
        os.chmod(folder, 0o755)
        locked = Path(folder) / "locked"
        locked.write_bytes(b"x")
        if how == "nobody":
            os.chown(locked, NOBODY, NOBODY)
        os.chmod(locked, 0)
        argv, extra = popen_options(how, [sys.executable, "-c", _PROBE, str(locked)])
        env = {**os.environ, "HOME": folder, "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=120, **extra)
        except (OSError, subprocess.SubprocessError) as error:
            return f"{how}: {type(error).__name__}: {error}"
        if done.returncode == 3:
            return f"{how}: a mode-000 file is still readable"
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            return f"{how}: cannot start the interpreter ({last})"
    return None


@functools.lru_cache(maxsize=1)
def mode() -> tuple[str, str]:
    """("self", "") when not root; else ("nobody" | "nocaps", reason) or ("skip", reason)."""
    if os.geteuid() != 0:
        return "self", "not running as root"
    reasons = []
    for how in ("nobody", "nocaps"):
        problem = _probe(how)
        if problem is None:
            return how, "; ".join(reasons)
        reasons.append(problem)
    return "skip", "running as root and cannot drop root's file-mode override: " + "; ".join(reasons)
