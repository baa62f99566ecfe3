"""Recursive listings of a folder tree, and what changed between two of them.

An entry is keyed by its path relative to the listed root. Files are compared by size and mtime (ns),
symbolic links by target, FIFOs and devices by type. Directories are compared by existence only: their
mtimes change whenever an entry is created or removed inside, including a run's own temporary files
that it cleaned up again. Nothing is opened or followed, so listing a FIFO never blocks.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["Listing", "list_tree", "diff"]

Listing = dict[str, tuple]


def _entry(path: str, st: os.stat_result) -> tuple:
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return ("link", os.readlink(path))
    if stat.S_ISDIR(mode):
        return ("dir",)
    if stat.S_ISREG(mode):
        return ("file", st.st_size, st.st_mtime_ns)
    return ("special", stat.S_IFMT(mode))


def list_tree(root: Path, exclude: Path | None = None) -> Listing:
    """Every entry under `root` (root itself as "."), skipping the subtree at `exclude`."""
    root = Path(root)
    listing: Listing = {}
    skip = os.path.normpath(str(exclude)) if exclude is not None else None
    try:
        listing["."] = _entry(str(root), os.lstat(root))
    except FileNotFoundError:
        return listing
    stack = [str(root)] if listing["."] == ("dir",) else []
    while stack:
        folder = stack.pop()
        try:
            names = os.listdir(folder)
        except OSError as error:  # an unreadable folder: record that, not its content
            listing[os.path.relpath(folder, root) + "/<unlistable>"] = ("error", error.errno)
            continue
        for name in names:
            path = os.path.join(folder, name)
            if skip is not None and os.path.normpath(path) == skip:
                continue
            try:
                entry = _entry(path, os.lstat(path))
            except FileNotFoundError:
                continue
            listing[os.path.relpath(path, root)] = entry
            if entry == ("dir",):
                stack.append(path)
    return listing


def diff(before: Listing, after: Listing) -> tuple[list[str], list[str], list[str]]:
    """(new, changed, removed) relative paths, sorted."""
    new = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    return new, changed, removed
