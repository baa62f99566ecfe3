"""The per-user cache directory where set-up steps (``make data``) leave files for qcompile to read."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """Return qcompile's cache directory, creating it if needed.

    Returns:
        ``$QCOMPILE_CACHE`` if that variable is set and non-empty, else ``~/.cache/qcompile``.
    """
    override = os.environ.get("QCOMPILE_CACHE")
    path = Path(override).expanduser() if override else Path.home() / ".cache" / "qcompile"
    path.mkdir(parents=True, exist_ok=True)
    return path
