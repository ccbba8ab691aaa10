"""A private temporary folder for one engine build, and the removal of those that builds
stopped or killed left behind.

Why: a build writes hundreds of megabytes of scratch models for a ResNet50 (the quantiser's
pre-processed and named copies, ONNX Runtime's calibration graph, TensorRT's work files), each
in a ``tempfile`` folder its own code removes on the way out. A build stopped by SIGTERM or
killed (the daemon stopping, the retrain job's time limit, the PC shutting down) never takes
that way out, and on an instrument PC that runs for weeks the folders pile up in the system's
temporary folder. Having the stopped process remove them in a signal handler was tried and
dropped: a signal that lands inside native code (OpenVINO, ONNX Runtime) crashes the
interpreter's teardown. So every build works inside one folder it holds an OS lock on (the
OS releases it however the process ends), and each build first removes the folders whose lock
nobody holds.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nscmonitor.engines.autobuild_status import BuildLock

log = logging.getLogger(__name__)

PREFIX = "nscm-build-"
OWNER = ".owner.lock"
#: a folder without its lock file is one whose build died between creating it and locking it,
#: or is being created right now: left alone until it is this old
UNLOCKED_GRACE_S = 3600.0
_TEMP_VARS = ("TMPDIR", "TEMP", "TMP")


def _size(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:  # removed meanwhile, or not ours to read: it does not count
            continue
    return total


def _abandoned(folder: Path, now: float) -> bool:
    owner = folder / OWNER
    if not owner.exists():
        try:
            return now - folder.stat().st_mtime > UNLOCKED_GRACE_S
        except OSError:
            return False
    lock = BuildLock(owner)
    try:
        if not lock.acquire():
            return False  # a build is running in it
    except OSError as exc:  # another user's folder, or a file system without locks
        log.debug("cannot check %s: %s", folder, exc)
        return False
    lock.release()
    return True


def sweep(parent: str | Path | None = None) -> list[tuple[Path, int]]:
    """Remove the build folders under ``parent`` (the system's temporary folder) that no
    running build holds; returns each one removed with its size in bytes."""
    parent = Path(parent or tempfile.gettempdir())
    removed: list[tuple[Path, int]] = []
    now = time.time()
    for folder in sorted(parent.glob(PREFIX + "*")):
        if folder.is_symlink() or not folder.is_dir() or not _abandoned(folder, now):
            continue
        size = _size(folder)
        try:
            shutil.rmtree(folder)
        except OSError as exc:
            log.warning("could not remove %s, left by a stopped engine build: %s", folder, exc)
            continue
        removed.append((folder, size))
    if removed:
        log.info("removed %d folder(s) left by stopped engine builds (%.1f MB)", len(removed),
                 sum(size for _, size in removed) / 1e6)
    return removed


@contextmanager
def scratch(parent: str | Path | None = None) -> Iterator[Path | None]:
    """This process's temporary files go into a folder of its own while the block runs (for
    Python's ``tempfile`` and, through the environment, for native libraries and children),
    which is removed at its end; folders of builds that ended without removing theirs are
    removed first. Where no such folder can be made (a temporary folder that is full, read-only
    or gone) the block runs as before, with None: the build itself then meets the trouble and
    records it as this machine's, instead of the build command ending in a traceback."""
    parent = Path(parent or tempfile.gettempdir())
    sweep(parent)
    try:
        folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
    except OSError as exc:
        log.warning("cannot make the engine build's temporary folder in %s (%s); it uses the usual one", parent, exc)
        yield None
        return
    lock = BuildLock(folder / OWNER)
    try:
        lock.acquire()
    except OSError as exc:  # a file system without locks: the folder is still removed at the end
        log.warning("cannot lock the engine build's temporary folder %s (%s)", folder, exc)
    saved_tempdir, saved_env = tempfile.tempdir, {k: os.environ.get(k) for k in _TEMP_VARS}
    tempfile.tempdir = str(folder)
    os.environ.update({k: str(folder) for k in _TEMP_VARS})
    try:
        yield folder
    finally:
        tempfile.tempdir = saved_tempdir
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        lock.release()
        try:
            shutil.rmtree(folder)
        except OSError as exc:
            if folder.exists():  # else a sweep that started just now took it: as good
                log.warning("could not remove the engine build's temporary folder %s: %s (the next build "
                            "retries)", folder, exc)
