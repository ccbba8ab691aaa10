"""A real watchdog observer on a temp folder, a real SQLite file, a real ONNX Runtime session."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from nscmonitor.store import models as m
from nscmonitor.store.reads import Repo

from conftest import cells_image, write_tiff


def wait_until(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Running:
    def __init__(self, runner) -> None:
        self.runner = runner
        self.thread = threading.Thread(target=runner.run, daemon=True)

    def __enter__(self):
        self.runner.setup()
        self.thread.start()
        return self.runner

    def __exit__(self, *exc) -> None:
        self.runner.stop_event.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "runner did not stop"


def n_done(runner) -> int:
    with runner.store.Session() as s:
        return s.scalar(select(func.count()).select_from(m.Image).where(m.Image.status == "done")) or 0


def name(i: int, well: str = "A1", hours: int = 0) -> str:
    return f"VID1_{well}_{i}_{hours // 24:02d}d{hours % 24:02d}h00m.tif"


class FakeTime:
    """The daemon's two clocks, moved only by the test: ``clock`` (monotonic: quiet periods,
    rescans) and ``wall`` (compared with file mtimes), advancing together. The wall runs a day
    behind the real clock: between a write and the test's ``os.utime`` the file briefly has its
    real mtime, which must look newer than any quiet period, not long settled (with the wall
    ahead of the real clock, a rescan that stat'ed the file in that instant took a growing file
    as complete, a rare failure of the slow-write test under load)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.epoch = time.time() - 86400.0 - self.now
        self.lock = threading.Lock()

    def clock(self) -> float:
        with self.lock:
            return self.now

    def wall(self) -> float:
        with self.lock:
            return self.epoch + self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


def image_status(runner, path: Path) -> str | None:
    with runner.store.Session() as s:
        return s.scalar(select(m.Image.status).where(m.Image.path == str(path)))


def test_slow_chunked_write_is_scored_once_after_completion(tmp_path: Path, make_runner) -> None:
    """The instrument writes in chunks, pausing less than the quiet period between them but
    longer than it in all: time is injected, so the pauses are exact however slow the machine.
    After each chunk a complete file with an old mtime is dropped in; once it is scored, a
    full discovery pass (with a rescan) has run since the chunk and must have left the
    growing file alone."""
    watch = tmp_path / "watch"
    watch.mkdir()
    t = FakeTime()
    quiet, pause = 1.0, 0.6
    runner = make_runner(watch, quiet_seconds=quiet, rescan_interval=pause - 0.1, clock=t.clock, wall=t.wall)
    target = watch / name(1)
    buf = tmp_path / "full.tif"
    write_tiff(buf, cells_image(1, (200, 240)))
    payload = buf.read_bytes()
    with Running(runner):
        with open(target, "wb") as fh:
            chunks = np.array_split(np.frombuffer(payload, np.uint8), 6)
            for i, c in enumerate(chunks):
                fh.write(c.tobytes())
                fh.flush()
                os.utime(target, (t.wall(), t.wall()))  # written now, in the daemon's time
                if i == len(chunks) - 1:
                    break
                # settled at once, but only a rescan can say so, and none is due before the pause
                probe = write_tiff(tmp_path / "probes" / name(1, f"B{i + 1}"), cells_image(100 + i))
                os.utime(probe, (t.wall() - 100, t.wall() - 100))
                probe = probe.rename(watch / probe.name)
                t.advance(pause)  # the instrument pauses mid-write; less than the quiet period
                wait_until(lambda p=probe: image_status(runner, p) == "done", what=f"probe {i + 1} to be scored")
                assert image_status(runner, target) is None, f"queued after chunk {i + 1} of {len(chunks)}"
        t.advance(quiet)
        wait_until(lambda: image_status(runner, target) == "done", what="the slow file to be scored")
    with runner.store.Session() as s:
        img = s.scalars(select(m.Image).where(m.Image.path == str(target))).one()
        preds = s.scalar(select(func.count()).select_from(m.Prediction).where(m.Prediction.image_id == img.id))
    assert img.size == len(payload)
    assert img.content_hash == hashlib.sha256(payload).hexdigest()
    assert img.attempts == 1 and preds == 1


def test_burst_of_200_files_each_scored_exactly_once(tmp_path: Path, make_runner) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    runner = make_runner(watch, quiet_seconds=0.3)
    src = tmp_path / "src"
    for i in range(200):
        row, col = divmod(i % 96, 12)
        write_tiff(src / name(1, f"{'ABCDEFGH'[row]}{col + 1}", hours=2 * (i // 96)), cells_image(i, (64, 64)))
    with Running(runner):
        for p in sorted(src.iterdir()):
            p.rename(watch / p.name)  # drop them all at once, as a copy tool would
        n_files = len(list(watch.iterdir()))
        assert n_files == 200
        wait_until(lambda: n_done(runner) == n_files, timeout=60, what="all files scored")
    counts = Repo(runner.store.engine).prediction_counts()
    assert len(counts) == n_files and set(counts.values()) == {1}


def test_start_scan_and_rescan_find_files_without_events(tmp_path: Path, make_runner) -> None:
    watch = tmp_path / "watch"
    before = write_tiff(watch / name(1), cells_image(1))
    runner = make_runner(watch, rescan_interval=0.5)
    with Running(runner):
        wait_until(lambda: n_done(runner) == 1, what="the file present before start")
        w = runner.folders[0].watcher
        w.stop()  # events are now lost; only the periodic rescan can find the next file
        w.supervise = lambda: None  # keep the observer down for this test: no restart may help
        later = write_tiff(watch / name(2), cells_image(2))
        wait_until(lambda: n_done(runner) == 2, what="the rescan to find the missed file")
    paths = {r.path for r, _ in Repo(runner.store.engine).images(1)}
    assert {str(before), str(later)} <= paths


def test_rewritten_file_is_scored_again_and_flagged(tmp_path: Path, make_runner) -> None:
    watch = tmp_path / "watch"
    f = write_tiff(watch / name(1), cells_image(1))
    runner = make_runner(watch, rescan_interval=0.3)

    def image():
        with runner.store.Session() as s:
            return s.scalars(select(m.Image)).one(), s.scalars(select(m.Prediction)).all()

    with Running(runner):
        wait_until(lambda: n_done(runner) == 1)
        _, first = image()
        t0 = f.stat().st_mtime
        os.utime(f, (t0 + 5, t0 + 5))  # touched, same content: a no-op, not a new score
        wait_until(lambda: image()[0].mtime == t0 + 5 and image()[0].status == "done", what="the touched file")
        img, preds = image()
        assert not img.rewritten and [p.id for p in preds] == [first[0].id]
        assert preds[0].created_at == first[0].created_at
        write_tiff(f, cells_image(99))  # new content at the same path
        os.utime(f, (t0 + 10, t0 + 10))
        wait_until(lambda: image()[0].rewritten and image()[0].status == "done", what="the rewritten file")
    img, preds = image()
    with runner.store.Session() as s:
        ev = s.scalars(select(m.Event.kind)).all()
    assert img.content_hash == hashlib.sha256(f.read_bytes()).hexdigest()
    assert len(preds) == 1 and preds[0].created_at > first[0].created_at and ev.count("rewritten") == 1


@pytest.mark.parametrize("polling", [False, True], ids=["events", "polling"])
def test_share_that_disappears_and_comes_back(tmp_path: Path, make_runner, polling: bool) -> None:
    """The folder vanishes (share outage): reported unreachable, nothing is lost or marked
    deleted; when it is back the watcher restarts and new files are scored. Polled, with the
    periodic rescan a minute away: the poller started anew finds what came after."""
    watch = tmp_path / "share"
    write_tiff(watch / name(1), cells_image(1))
    runner = make_runner(watch, rescan_interval=60.0 if polling else 0.5, heartbeat_s=0.2, polling=polling)
    with Running(runner):
        wait_until(lambda: n_done(runner) == 1)
        away = tmp_path / "share-offline"
        watch.rename(away)

        def reachable() -> bool:
            d = Repo(runner.store.engine).daemons(1)[0]
            return all(w["reachable"] for w in d.watched)

        wait_until(lambda: not reachable(), what="the outage to be reported")
        write_tiff(away / name(2), cells_image(2))  # written while the share was away
        away.rename(watch)
        wait_until(reachable, what="the folder to be seen again")
        wait_until(lambda: n_done(runner) == 2, what="the file written during the outage")
        write_tiff(watch / name(3), cells_image(3))
        wait_until(lambda: n_done(runner) == 3, what="a file written after the outage")
    with runner.store.Session() as s:
        assert s.scalar(select(func.count()).select_from(m.Image).where(m.Image.status != "done")) == 0


def test_polling_observer_for_network_shares(tmp_path: Path, make_runner) -> None:
    """Shares deliver no change events: with polling on, the listing poller finds files, in a
    folder that exists at start and in one made later (the full rescan is 60 s away)."""
    watch = tmp_path / "share"
    (watch / "TimePoint_1").mkdir(parents=True)
    runner = make_runner(watch, polling=True, quiet_seconds=0.2, poll_interval=0.2)
    with Running(runner):
        from nscmonitor.intake.watcher import ListingPoller

        wait_until(lambda: runner.folders[0].watcher.observer is not None, what="the observer to start")
        poller = runner.folders[0].watcher.observer
        assert isinstance(poller, ListingPoller)
        wait_until(lambda: poller.passes >= 1, what="the poller's first pass")
        write_tiff(watch / "TimePoint_1" / name(1), cells_image(1))
        wait_until(lambda: n_done(runner) == 1, what="the polled file")
        write_tiff(watch / "TimePoint_2" / name(2), cells_image(2))
        wait_until(lambda: n_done(runner) == 2, what="the polled file in a new folder")


def test_status_shows_each_folder_s_files_and_rescan_and_warns_when_rescans_hold_up_scoring(
        tmp_path: Path, make_runner, capsys) -> None:
    """A real daemon's heartbeat carries each folder's file count and how long its last full
    rescan took; ``status`` prints them, and warns about a folder whose rescan takes more than a
    quarter of its interval (time its loop spends looking at files instead of scoring)."""
    from nscmonitor.cli import main
    from nscmonitor.ops.health import slow_rescan_warnings

    watch = tmp_path / "watch"
    for i in range(3):
        write_tiff(watch / name(i), cells_image(i))
    runner = make_runner(watch)
    runner.run(once=True)
    assert main(["status", "--db", runner.store.engine.url.render_as_string(hide_password=False), "--json"]) == 3
    import json

    (w,) = json.loads(capsys.readouterr().out)["daemon"]["watched"]
    assert w["files"] == 3 and 0 <= w["rescan_s"] < 30 and w["rescan_deep"] is True and w["rescan_interval"] == 60.0
    assert slow_rescan_warnings([w]) == []
    slow = {**w, "files": 250_000, "rescan_s": 21.0}
    (warning,) = slow_rescan_warnings([slow])
    assert "took 21 s of every 60 s" in warning and "250,000 files" in warning
    assert slow_rescan_warnings([{**w, "rescan_s": 14.0}, str(watch)]) == []  # a start-up row's bare path


def test_a_daemon_reads_only_its_own_folders_known_files_at_start(tmp_path: Path, make_runner) -> None:
    """A database that kept a year of finished experiments: a daemon watching one folder
    seeds its record of known files with that folder's images only (and paths stored escaped,
    which cannot be told apart by their stored form), not with every image ever stored. A
    folder whose name begins with the watched one's, or holds LIKE's wildcards, is told apart."""
    import os

    db = f"sqlite:///{tmp_path / 'shared.db'}"
    old, watched, sibling = tmp_path / "old_100%", tmp_path / "plate_1", tmp_path / "plate_10"
    for folder, n in ((old, 2), (watched, 3), (sibling, 1)):
        for i in range(n):
            write_tiff(folder / name(i), cells_image(i))
    odd = watched / os.fsdecode(b"VID1_A2_9_00d00h00m_\xff.tif")  # a name that is not valid UTF-8
    write_tiff(odd, cells_image(7))
    for folder in (old, sibling):
        make_runner(folder, db_url=db, experiment=folder.name).run(once=True)
    first = make_runner(watched, db_url=db, experiment="now")
    first.run(once=True)
    runner = make_runner(watched, db_url=db, experiment="now")
    runner.setup()
    known = set(runner.intake.known._files)
    assert known == {str(watched / name(i)) for i in range(3)} | {str(odd)}
    with runner.store.Session() as s:
        assert s.scalar(select(func.count()).select_from(m.Image)) == 2 + 4 + 1
