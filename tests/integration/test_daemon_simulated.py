"""The daemon against the simulated microscope writing at (compressed) real pace: every
frame scored exactly once, none before it was complete; on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from nscmonitor.simulate.microscope import Microscope
from nscmonitor.simulate.render import Camera
from nscmonitor.store import models as m
from nscmonitor.store.reads import Repo

from conftest import csv_rows


@pytest.mark.parametrize("vendor", ["imagexpress", "incucyte"])  # growing files; temp name then rename
def test_daemon_scores_each_simulated_frame_once_after_completion(tmp_path: Path, make_runner, vendor: str,
                                                                  db_url: str) -> None:
    out = tmp_path / "scope"
    out.mkdir()
    scope = Microscope(vendor=vendor, plate_format=96, fields=2, hours=4, interval_h=2, seed=5,
                       wells=["A01", "B02", "C03"], camera=Camera(shape=(192, 256)),
                       seconds_per_image=360.0)  # at speed 3600: 0.1 s per image, 2 s per interval
    runner = make_runner(out, quiet_seconds=0.5, rescan_interval=1.0, profile=vendor, db_url=db_url)
    runner.setup()
    th = threading.Thread(target=runner.run, daemon=True)
    th.start()
    try:
        manifest = scope.run(out, speed=3600.0)
        rows = csv_rows(manifest)
        expected = {str(out / r["path"]) for r in rows}
        end = time.monotonic() + 60
        while time.monotonic() < end:
            with runner.store.Session() as s:
                done = set(s.scalars(select(m.Image.path).where(m.Image.status == "done")))
            if expected <= done:
                break
            time.sleep(0.1)
    finally:
        runner.stop_event.set()
        th.join(30)
    assert len(rows) == 3 * 2 * 3
    with runner.store.Session() as s:
        images = {i.path: i for i in s.scalars(select(m.Image))}
    assert set(images) == expected, "every frame, and nothing else (no sidecar, no temp file), was queued"
    for path, img in images.items():
        assert img.status == "done" and img.attempts == 1, (path, img.status, img.error, img.attempts)
        assert img.content_hash == hashlib.sha256(Path(path).read_bytes()).hexdigest(), "scored a partial file"
    counts = Repo(runner.store.engine).prediction_counts()
    assert sorted(counts) == sorted((p, runner.model.version) for p in expected) and set(counts.values()) == {1}
    by_path = {str(out / r["path"]): r for r in rows}
    for path, img in images.items():
        r = by_path[path]
        assert img.field == int(r["field"]), (path, img.field)
        if vendor == "imagexpress":  # TimePoint_<t> folders carry the scan index
            assert img.timepoint == int(r["timepoint"]), (path, img.timepoint)
        else:  # Incucyte names carry the elapsed time, never a scan index
            assert img.timepoint is None, (path, img.timepoint)
            assert img.elapsed_h == pytest.approx(float(r["elapsed_h"]), abs=1 / 60), (path, img.elapsed_h)
