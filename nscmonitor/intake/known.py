"""The one record of the files intake has handed on, and the one look at a file that feeds it.

Which files are already known lived in three places (the database, a dict in the runner,
the readiness tracker) that had to agree. Now the database seeds this record once at
start; intake consults only it, adds a file when it hands it on and drops one the
database refused, so the next rescan looks at it again. The readiness tracker holds the
other files: those still being written, not known yet.

``look`` is the one ``lstat`` per file and pass: size, mtime and whether it is a link or a
regular file all come from it, instead of separate calls for each question.
"""

from __future__ import annotations

import os
import stat
from typing import NamedTuple


class Look(NamedTuple):
    """One ``lstat`` of a path: a symbolic link's own size and mtime, never its target's."""

    size: int
    mtime: float
    link: bool
    regular: bool


def look(path: str) -> Look | None:
    """None when the path is gone (or cannot be stat'ed)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return Look(st.st_size, st.st_mtime, stat.S_ISLNK(st.st_mode), stat.S_ISREG(st.st_mode))


class Ready(NamedTuple):
    """A file (or OME-Zarr field, or container) that has stopped changing."""

    path: str
    size: int
    mtime: float
    link: bool = False


class KnownFiles:
    """Path -> (size, mtime) of every file queued (or deliberately passed over) so far."""

    def __init__(self, files: dict[str, tuple[int, float]] | None = None) -> None:
        self._files = dict(files or {})

    def __len__(self) -> int:
        return len(self._files)

    def is_new(self, path: str, seen: Look | None) -> bool:
        """True for a path never handed on, or one whose size or mtime changed since (a
        known path that vanished counts too, so the tracker forgets it)."""
        return self._files.get(path) != (None if seen is None else (seen.size, seen.mtime))

    def has(self, path: str) -> bool:
        return path in self._files

    def is_new_stat(self, path: str, stat: tuple[int, float] | None) -> bool:
        """``is_new`` for a (size, mtime) another look gave (None: not given, so new)."""
        return stat is None or self._files.get(path) != stat

    def remember(self, path: str, size: int, mtime: float) -> None:
        self._files[path] = (size, mtime)

    def forget(self, path: str) -> None:
        self._files.pop(path, None)
