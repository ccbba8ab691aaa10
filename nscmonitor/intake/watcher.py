"""Folder watching: events are hints, the periodic rescan is the truth.

Native events miss files on network shares and overflow under bursts; the polling observer
has died for good after an SMB outage (watchdog#1065). So the handler only puts paths on a
queue (house rule 2), a full rescan runs at start and every ``rescan_interval``, and the
supervisor restarts a dead observer and reports an unreachable folder instead of treating
its files as gone.

On shares (``polling``) new files are found by ``ListingPoller`` rather than watchdog's polling
observer, which stats every file of the tree at every pass: on a folder that had gathered
200,000 images that took 69 % of a core, every 2 s, for nothing but the week's few new files
(``benchmarks/watch_cost.py``). A folder gets a new entry only when its own mtime changes, so
the poller stats each directory and lists only those that changed; the files it has not seen
go on the queue, and the readiness tracker follows their growth from there.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from nscmonitor.intake.filters import JUNK_DIRS

log = logging.getLogger(__name__)

#: a polled folder's full rescan looks at every known file again this often: in between, only
#: the known files of directories whose mtime changed are looked at (a new, removed or renamed
#: file changes it; a file rewritten in place does not, and waits for this)
DEEP_RESCAN_S = 3600.0


class _Enqueue(FileSystemEventHandler):
    def __init__(self, q: queue.Queue[str]) -> None:
        self.q = q

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            if event.is_directory:
                return
            if event.event_type in ("created", "modified", "closed"):
                self.q.put(os.fsdecode(event.src_path))
            elif event.event_type == "moved":
                self.q.put(os.fsdecode(event.dest_path))
        except Exception:  # the observer thread must never die because of one event
            log.exception("watch event handler failed for %r", event)


#: Windows' directory listing carries each file's size and times, so ``DirEntry.stat`` costs
#: no call to the file system there (on a share: no round trip per file); elsewhere it is an
#: ``lstat`` of its own
LISTING_HAS_STATS = os.name == "nt"


def scan(root: Path, dirs: dict[str, float] | None = None,
         listed: dict[str, tuple[int, float]] | None = None) -> Iterator[str]:
    """Every regular file below root (junk folders pruned), newest folders first is not
    needed: the readiness tracker orders nothing, the queue scores by discovery order.
    ``dirs`` gets each listed directory's mtime (one look per directory); ``listed`` each
    regular file's (size, mtime) as the listing gives it."""
    stack = [str(root)]
    while stack:
        d = stack.pop()
        try:
            if dirs is not None:
                dirs[d] = os.stat(d).st_mtime
            files, subdirs = list_dir(d)
        except OSError as exc:
            if d == str(root):
                raise
            log.warning("cannot list %s: %s", d, exc)
            continue
        stack.extend(subdirs)
        for e in files:
            if listed is not None and not e.is_symlink():
                try:
                    st = e.stat(follow_symlinks=False)
                    listed[e.path] = (st.st_size, st.st_mtime)
                except OSError as exc:  # gone since listed: the look that follows says so
                    log.debug("cannot stat %s: %s", e.path, exc)
            yield e.path  # links are yielded to be recorded as skipped, never followed


def list_dir(d: str) -> tuple[list[os.DirEntry], list[str]]:
    """A directory's files and symbolic links, and its subdirectories other than junk ones
    (never following a link): the one listing rule of the rescan and the poller."""
    files, subdirs = [], []
    with os.scandir(d) as it:
        for e in it:
            try:
                if e.is_dir(follow_symlinks=False):
                    if e.name not in JUNK_DIRS:
                        subdirs.append(e.path)
                elif e.is_file(follow_symlinks=False) or e.is_symlink():
                    files.append(e)
            except OSError as exc:
                log.warning("cannot stat %s: %s", e.path, exc)
    return files, subdirs


class ListingPoller(threading.Thread):
    """Finds new files on a share by listing only the directories whose mtime changed.

    Every ``interval`` it stats each directory (one look per directory, not per file) and
    lists those whose mtime differs from the last pass, plus those that changed in the last
    pass: a file created in the same mtime tick as the change the pass saw (filesystems with
    coarse clocks) leaves the mtime as it was. Names not in the last listing of their
    directory are put on the queue. The first pass only learns the tree and then calls
    ``on_first_pass`` (the watcher makes its next full rescan due), so a file written between
    the start-up scan and the poller's first look is found by that rescan, without putting
    every file of the tree on the queue to be looked at again. A pass that fails (a
    share gone, a directory removed while listed) is logged and the next one is tried: the
    thread never dies of it (watchdog#1065), and the periodic full rescan remains the truth."""

    def __init__(self, root: Path, q: queue.Queue[str], interval: float,
                 on_first_pass: Callable[[], None] | None = None) -> None:
        super().__init__(daemon=True, name=f"poll {root}")
        self.root = str(root)
        self.q = q
        self.interval = interval
        self.on_first_pass = on_first_pass
        self.passes = 0
        self._halt = threading.Event()
        #: directory -> (its mtime at the last listing, its files' names' hashes, its
        #: subdirectories); hashes, not names, keep a year of images' names out of memory
        self._dirs: dict[str, tuple[float, frozenset[int], tuple[str, ...]]] = {}
        self._changed: set[str] = set()
        self._failing = False

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.poll()
                if self._failing:
                    log.info("polling %s works again", self.root)
                self._failing = False
            except OSError as exc:
                if not self._failing:
                    log.warning("polling %s failed (%s); trying again every %g s", self.root, exc, self.interval)
                self._failing = True
            except Exception:  # the thread must outlive any one pass
                log.exception("polling %s failed", self.root)
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()

    def poll(self) -> list[str]:
        """One pass: the new files' paths, also put on the queue."""
        new: list[str] = []
        first = self.passes == 0
        changed: set[str] = set()
        seen: set[str] = set()
        stack = [self.root]
        while stack:
            d = stack.pop()
            seen.add(d)
            try:
                mtime = os.stat(d).st_mtime
            except OSError as exc:
                if d == self.root:
                    raise
                if not isinstance(exc, FileNotFoundError):  # not merely removed since its parent was listed
                    log.warning("cannot stat folder %s: %s", d, exc)
                continue
            known = self._dirs.get(d)
            if known is not None and known[0] == mtime and d not in self._changed:
                stack.extend(known[2])
                continue
            names, subdirs = self._list(d)
            if not first:
                before = known[1] if known is not None else frozenset()
                new.extend(os.path.join(d, n) for n in sorted(names) if hash(n) not in before)
            if known is None or known[0] != mtime:
                changed.add(d)
            self._dirs[d] = (mtime, frozenset(map(hash, names)), subdirs)
            stack.extend(subdirs)
        for gone in set(self._dirs) - seen:
            del self._dirs[gone]
        self._changed = changed
        self.passes += 1
        for p in new:
            self.q.put(p)
        if first and self.on_first_pass is not None:
            self.on_first_pass()
        return new

    @staticmethod
    def _list(d: str) -> tuple[frozenset[str], tuple[str, ...]]:
        files, subdirs = list_dir(d)
        return frozenset(e.name for e in files), tuple(subdirs)


@dataclass
class _Scan:
    """A full rescan in progress: the walk, each listed directory's mtime, each file's listed
    (size, mtime) where listings give them, whether every known file is looked at again, and
    how many files and seconds of intake's work it has taken so far."""

    paths: Iterator[str]
    dirs: dict[str, float]
    listed: dict[str, tuple[int, float]] | None
    deep: bool
    files: int = 0
    seconds: float = 0.0


class FolderWatcher:
    """One watched folder: observer + periodic rescan + supervision."""

    def __init__(self, root: Path, *, polling: bool, rescan_interval: float, poll_interval: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, listing_stats: bool = LISTING_HAS_STATS) -> None:
        self.root = Path(root)
        self.polling = polling
        self.rescan_interval = rescan_interval
        self.poll_interval = poll_interval
        self.clock = clock
        self.events: queue.Queue[str] = queue.Queue()
        self._observer: Observer | ListingPoller | None = None
        self._next_scan = 0.0
        self._next_deep = 0.0
        #: directory -> its mtime at the last full scan
        self._dirs: dict[str, float] = {}
        #: whether listings give each file's size and mtime without a look of its own
        self.listing_stats = listing_stats
        #: the full rescan in progress, None between rescans
        self.scanning: _Scan | None = None
        #: the last full rescan: files found, seconds it took intake (listing and looks), deep
        self.last_scan: dict | None = None
        self.reachable = True
        self.last_error: str | None = None
        self.restarts = 0
        #: events or polling were asked for (``start``), so a dead observer is restarted
        self.watching = False

    @property
    def observer(self) -> Observer | ListingPoller | None:
        """The running observer (native or polling); None while stopped or unreachable. For
        status reports and tests: only the watcher starts, restarts and stops it."""
        return self._observer

    def start(self) -> None:
        """Watch for events (or poll, on a share) from now on; without it (a ``--once`` pass)
        the rescans alone find the files, and no observer is started behind the caller's back."""
        self.watching = True
        self._start_observer()

    def _start_observer(self) -> None:
        if not self.root.is_dir():
            self.reachable = False
            self.last_error = f"folder not reachable: {self.root}"
            return
        if self.polling:
            poller = ListingPoller(self.root, self.events, self.poll_interval, on_first_pass=self.rescan_soon)
            poller.start()
            self._observer = poller
            self.reachable = True
            return
        obs = Observer()
        try:
            obs.schedule(_Enqueue(self.events), str(self.root), recursive=True)
            obs.daemon = True
            obs.start()
        except OSError as exc:
            self.reachable = False
            self.last_error = f"cannot watch {self.root}: {exc}"
            log.warning("%s", self.last_error)
            return
        self._observer = obs
        self.reachable = True

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    def supervise(self) -> None:
        """Restart a dead observer; notice a folder that vanished or came back."""
        up = self.root.is_dir()
        if not up:
            if self.reachable:
                log.warning("watched folder became unreachable: %s", self.root)
            self.reachable = False
            self.last_error = f"folder not reachable: {self.root}"
            self.stop()
            return
        if not self.watching:
            if not self.reachable:
                log.info("watched folder is back: %s; rescanning", self.root)
                self.reachable, self._next_scan = True, 0.0
            return
        if not self.reachable or self._observer is None or not self._observer.is_alive():
            if self._observer is not None:
                log.warning("observer for %s died; restarting", self.root)
                self.restarts += 1
            came_back = not self.reachable
            self.stop()
            self._start_observer()
            if came_back and self.reachable:
                log.info("watched folder is back: %s; rescanning", self.root)
                self._next_scan = 0.0

    def rescan_soon(self) -> None:
        """Make the next full rescan due now (called from the poller's thread: one float
        assignment)."""
        self._next_scan = 0.0

    def due_for_scan(self) -> bool:
        return self.clock() >= self._next_scan

    def start_scan(self) -> None:
        """Begin a full rescan, walked a slice at a time (``scan_slice``) so that the daemon
        scores between slices instead of waiting for a whole share's listing. Whether it looks
        at every known file again (``deep``): on a share (``polling``), where each look is a
        network round trip, at the first scan and every ``DEEP_RESCAN_S`` (a file rewritten in
        place leaves its directory's mtime alone), otherwise only at the known files of
        directories whose mtime changed since the last scan (``unchanged_dir``); on a local
        folder, where looks are cheap, at every scan."""
        now = self.clock()
        self._next_scan = now + self.rescan_interval
        deep = not self.polling or now >= self._next_deep
        if deep:
            self._next_deep = now + max(DEEP_RESCAN_S, self.rescan_interval)
        dirs: dict[str, float] = {}
        listed: dict[str, tuple[int, float]] | None = {} if self.listing_stats else None
        self.scanning = _Scan(scan(self.root, dirs, listed), dirs, listed, deep)

    def scan_slice(self, n: int) -> list[str] | None:
        """Up to ``n`` more files of the rescan in progress; None when it has ended (a folder
        that cannot be listed ends it at once, reported unreachable)."""
        sc = self.scanning
        if sc is None:
            return None
        try:
            out = list(itertools.islice(sc.paths, n))
        except OSError as exc:
            self.reachable = False
            self.last_error = f"cannot list {self.root}: {exc}"
            log.warning("%s", self.last_error)
            out = []
        if out:
            sc.files += len(out)
            return out
        self._dirs = sc.dirs
        self.scanning = None
        return None

    def unchanged_dir(self, d: str) -> bool:
        """Whether the rescan in progress may leave the known files of directory ``d`` alone:
        not a deep one, and ``d``'s mtime is what the last rescan found."""
        sc = self.scanning
        return sc is not None and not sc.deep and d in sc.dirs and self._dirs.get(d) == sc.dirs[d]

    def listed(self, path: str) -> tuple[int, float] | None:
        """(size, mtime) of a file as the rescan in progress listed it, where listings give
        them (``LISTING_HAS_STATS``); else None."""
        sc = self.scanning
        return sc.listed.get(path) if sc is not None and sc.listed is not None else None

    def drain(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out


def stop_all(watchers: list[FolderWatcher]) -> None:
    threads = [threading.Thread(target=w.stop) for w in watchers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
