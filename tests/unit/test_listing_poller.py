"""The share poller on a real folder: it lists only directories whose mtime changed, puts each
new file on the queue once (after a first pass that learns the tree and asks for a rescan),
finds files in folders made after it started, survives a folder that disappears, and catches
a file created in the same mtime tick as a change it saw."""

from __future__ import annotations

import os
import queue
from pathlib import Path

from nscmonitor.intake.watcher import ListingPoller


def _poller(root: Path) -> ListingPoller:
    return ListingPoller(root, queue.Queue(), interval=0.1)


def test_new_files_once_in_old_and_new_folders(tmp_path: Path) -> None:
    (tmp_path / "TimePoint_1").mkdir()
    (tmp_path / "TimePoint_1" / "a.tif").write_bytes(b"1")
    (tmp_path / "@eaDir").mkdir()  # a junk folder (a NAS's thumbnails) is never listed
    (tmp_path / "@eaDir" / "x.tif").write_bytes(b"1")
    told = []
    p = ListingPoller(tmp_path, queue.Queue(), interval=0.1, on_first_pass=lambda: told.append(True))
    assert p.poll() == [] and told == [True]  # the first pass learns the tree and asks for a full rescan
    assert p.poll() == [] and told == [True]
    (tmp_path / "TimePoint_1" / "b.tif").write_bytes(b"1")
    (tmp_path / "TimePoint_2").mkdir()
    (tmp_path / "TimePoint_2" / "c.tif").write_bytes(b"1")
    assert sorted(p.poll()) == [str(tmp_path / "TimePoint_1" / "b.tif"), str(tmp_path / "TimePoint_2" / "c.tif")]
    (tmp_path / "TimePoint_1" / "b.tif").write_bytes(b"grown")  # growth is the readiness tracker's to follow
    assert p.poll() == []
    got = []
    while not p.q.empty():
        got.append(p.q.get_nowait())
    assert sorted(got) == sorted(str(tmp_path / d / f) for d, f in (("TimePoint_1", "b.tif"), ("TimePoint_2", "c.tif")))


def test_only_changed_directories_are_listed(tmp_path: Path, monkeypatch) -> None:
    for d in range(20):
        (tmp_path / f"TimePoint_{d}").mkdir()
        (tmp_path / f"TimePoint_{d}" / "a.tif").write_bytes(b"1")
    p = _poller(tmp_path)
    p.poll()
    p.poll()  # the directories that changed before the first pass are listed once more
    listed: list[str] = []
    real = ListingPoller._list

    def counting(d: str):
        listed.append(d)
        return real(d)

    monkeypatch.setattr(ListingPoller, "_list", staticmethod(counting))
    assert p.poll() == [] and listed == []
    (tmp_path / "TimePoint_7" / "b.tif").write_bytes(b"1")
    assert p.poll() == [str(tmp_path / "TimePoint_7" / "b.tif")]
    assert listed == [str(tmp_path / "TimePoint_7")]


def test_a_file_created_in_the_same_mtime_tick_is_found(tmp_path: Path) -> None:
    """On a filesystem whose clock is coarse, a file created just after a pass may leave the
    directory's mtime as that pass saw it: a directory that changed is listed again next pass."""
    d = tmp_path / "TimePoint_1"
    d.mkdir()
    p = _poller(tmp_path)
    p.poll()
    p.poll()
    (d / "a.tif").write_bytes(b"1")
    assert p.poll() == [str(d / "a.tif")]
    tick = os.stat(d).st_mtime
    (d / "b.tif").write_bytes(b"1")
    os.utime(d, (tick, tick))  # the same tick: the mtime did not move
    assert p.poll() == [str(d / "b.tif")]


def test_a_folder_that_disappears_and_a_root_that_is_gone(tmp_path: Path) -> None:
    import shutil

    import pytest

    (tmp_path / "A").mkdir()
    (tmp_path / "A" / "a.tif").write_bytes(b"1")
    p = _poller(tmp_path)
    p.poll()
    shutil.rmtree(tmp_path / "A")
    assert p.poll() == []
    (tmp_path / "A").mkdir()
    (tmp_path / "A" / "a.tif").write_bytes(b"2")  # the same name again: a new file
    assert p.poll() == [str(tmp_path / "A" / "a.tif")]
    gone = _poller(tmp_path / "missing")
    with pytest.raises(OSError):
        gone.poll()
    gone.start()  # the thread outlives failing passes
    gone._halt.wait(0.35)
    assert gone.is_alive()
    gone.stop()
    gone.join(2)
    assert not gone.is_alive()
