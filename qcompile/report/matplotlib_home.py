"""matplotlib without writing into the user's home folder.

matplotlib keeps a font cache and creates its config folder under ~/.cache and ~/.config the first time it
is imported; qcompile writes nothing outside its output folder. So, unless the user chose a folder
(MPLCONFIGDIR) or matplotlib is already imported by the host program, the first chart of a process points
MPLCONFIGDIR at a private temporary folder, which is removed when the process exits.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

__all__ = ["use_private_config"]

_folder: str | None = None


def use_private_config() -> None:
    """Point matplotlib's config and cache at a temporary folder of this process (once), if it is ours to set."""
    global _folder
    if _folder is not None or "matplotlib" in sys.modules or "MPLCONFIGDIR" in os.environ:
        return
    _folder = tempfile.mkdtemp(prefix="qcompile-matplotlib-")
    os.environ["MPLCONFIGDIR"] = _folder
    atexit.register(shutil.rmtree, _folder, ignore_errors=True)
