"""The readiness rules, driven by an injected clock and stat function (no sleeping)."""

from __future__ import annotations

import os
import stat

from nscmonitor.intake.readiness import ReadinessTracker


class FakeFS:
    def __init__(self) -> None:
        self.files: dict[str, tuple[int, float, int]] = {}
        self.now = 0.0

    def stat(self, path: str) -> os.stat_result:
        if path not in self.files:
            raise FileNotFoundError(path)
        size, mtime, mode = self.files[path]
        return os.stat_result((mode, 0, 0, 1, 0, 0, size, 0, int(mtime), 0))

    def clock(self) -> float:
        return self.now


def tracker(fs: FakeFS, quiet: float = 5.0) -> ReadinessTracker:
    return ReadinessTracker(quiet, clock=fs.clock, stat=fs.stat)


REG = stat.S_IFREG | 0o644


def test_ready_only_after_quiet_period_without_change() -> None:
    fs = FakeFS()
    t = tracker(fs)
    fs.files["a.tif"] = (100, 1.0, REG)
    t.touch("a.tif")
    fs.now = 4.9
    assert t.ready() == []
    fs.now = 5.0
    assert t.ready() == [("a.tif", 100, 1.0)]
    assert t.ready() == [] and len(t) == 0


def test_growing_file_restarts_the_quiet_period() -> None:
    fs = FakeFS()
    t = tracker(fs)
    fs.files["a.tif"] = (100, 1.0, REG)
    t.touch("a.tif")
    fs.now = 4.0
    fs.files["a.tif"] = (200, 4.0, REG)  # a chunk arrived: a size-only writer pause is not enough
    assert t.ready() == []
    fs.now = 8.9
    assert t.ready() == []
    fs.now = 9.0
    assert t.ready() == [("a.tif", 200, 4.0)]


def test_same_size_new_mtime_is_a_change() -> None:
    fs = FakeFS()
    t = tracker(fs)
    fs.files["a.tif"] = (100, 1.0, REG)
    t.touch("a.tif")
    fs.now = 3.0
    fs.files["a.tif"] = (100, 3.0, REG)  # pre-allocated file being filled in place
    fs.now = 6.0
    assert t.ready() == []


def test_event_restarts_quiet_period_but_rescan_does_not() -> None:
    fs = FakeFS()
    t = tracker(fs)
    fs.files["a.tif"] = (100, 1.0, REG)
    t.touch("a.tif")
    fs.now = 4.0
    t.touch("a.tif", event=False)
    fs.now = 5.0
    assert [r[0] for r in t.ready()] == ["a.tif"]
    t.touch("a.tif")
    fs.now = 9.0
    t.touch("a.tif", event=True)
    fs.now = 13.0
    assert t.ready() == []


def test_vanished_or_renamed_file_drops_out() -> None:
    fs = FakeFS()
    t = tracker(fs)
    fs.files["scan.tmp"] = (10, 1.0, REG)
    t.touch("scan.tmp")
    del fs.files["scan.tmp"]  # temp-then-rename writer
    fs.now = 10.0
    assert t.ready() == [] and len(t) == 0


def test_non_regular_file_is_never_ready() -> None:
    fs = FakeFS()
    t = tracker(fs)
    fs.files["fifo.tif"] = (0, 1.0, stat.S_IFIFO | 0o644)
    t.touch("fifo.tif")
    fs.now = 10.0
    assert t.ready() == []


def test_settled_file_from_scan_needs_no_wait() -> None:
    fs = FakeFS()
    t = tracker(fs)
    fs.files["old.tif"] = (100, 1.0, REG)
    t.add_settled("old.tif", 100, 1.0)
    assert t.ready() == [("old.tif", 100, 1.0)]
