"""Thresholds of the slow-failure checks: disk filling up, a queue that waits for ever,
drive letters that a service cannot see."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from nscmonitor.ops.checks import GIB, backlog_stall, database_disk, disk_space, drive_letter_warning

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(("free", "total", "level"), [
    (500 * GIB, 1000 * GIB, "ok"),
    (60 * GIB, 1000 * GIB, "ok"),          # 6 % of a big disk: still fine
    (40 * GIB, 1000 * GIB, "warning"),     # under 5 % of a big disk
    (4 * GIB, 20 * GIB, "warning"),        # 20 % of a small disk but under 5 GiB
    (6 * GIB, 20 * GIB, "ok"),
    (GIB // 2, 1000 * GIB, "critical"),
    (0, 0, "critical"),
])
def test_disk_space_levels(free: int, total: int, level: str) -> None:
    c = disk_space(free, total, where="/data")
    assert c.level == level
    assert "/data" in c.message and "GiB free" in c.message


def test_database_disk_reads_the_volume_of_the_sqlite_file(tmp_path) -> None:
    c = database_disk(f"sqlite:///{tmp_path / 'not-yet' / 'nsc.db'}")
    assert c is not None and str(tmp_path) in c.message
    assert database_disk("postgresql://db.lab/nsc") is None


def test_backlog_that_waits_with_nothing_scored_is_a_stall() -> None:
    old = NOW - timedelta(minutes=40)
    msg = backlog_stall(12, old, NOW - timedelta(hours=3), NOW)
    assert msg is not None and "12 images waiting" in msg and "40 min" in msg
    assert backlog_stall(12, old, None, NOW) is not None


@pytest.mark.parametrize(("waiting", "oldest_min", "scored_min"), [
    (0, None, None),        # nothing waiting
    (5, 3, None),           # fresh work: the daemon has not had its chance yet
    (500, 60, 1),           # a burst being worked off
])
def test_not_a_stall(waiting: int, oldest_min: int | None, scored_min: int | None) -> None:
    oldest = None if oldest_min is None else NOW - timedelta(minutes=oldest_min)
    scored = None if scored_min is None else NOW - timedelta(minutes=scored_min)
    assert backlog_stall(waiting, oldest, scored, NOW) is None


@pytest.mark.parametrize(("path", "warns"), [
    ("Z:\\imager\\export", True),
    ("z:/imager", True),
    ("C:\\data\\plates", False),
    ("\\\\imager01\\export\\plates", False),
    ("/mnt/imager", False),
])
def test_drive_letter_warning(path: str, warns: bool) -> None:
    msg = drive_letter_warning(path, is_windows=False)
    assert (msg is not None) == warns
    if warns:
        assert "UNC" in msg
