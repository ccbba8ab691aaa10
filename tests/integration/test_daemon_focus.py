"""The daemon fails the frames of an autofocus failure as out of focus, judged against the same
field's other frames, and nothing else: the simulated microscope's own failures (its manifest
says which), a real watcher, a real SQLite file or PostgreSQL server, ONNX Runtime on the tiny model."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import event, select

from nscmonitor.ops.health import CHANNEL_WINDOW, focus_warnings
from nscmonitor.report.export import export_images
from nscmonitor.report.html import image_summary
from nscmonitor.simulate.microscope import Microscope
from nscmonitor.simulate.render import Camera
from nscmonitor.store import models as m
from nscmonitor.store.reads import Repo

from conftest import csv_rows

# Seed 1 of the simulator: B02 loses focus at its third scan (13 um), C10 at its fourth
# (12 um) and C08 at its first, which has nothing before it; D05 keeps it throughout. The
# manifest is checked below, so a change to the simulator's draws shows up as such and not
# as a daemon fault.
WELLS = ["B02", "C08", "C10", "D05"]


def _scored(runner, scope: Microscope, out: Path, live: bool, timeout_s: float = 90.0) -> list[dict[str, str]]:
    """The manifest's rows once the daemon has scored every frame: written while it runs
    (``live``) or all before it starts (a backlog)."""
    manifest = None if live else scope.run(out, speed=0)
    th = threading.Thread(target=runner.run, daemon=True)
    th.start()
    try:
        if live:
            manifest = scope.run(out, speed=14400.0)  # a scan every 2 s
        rows = csv_rows(manifest)
        expected = {str(out / r["path"]) for r in rows}
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            with runner.store.Session() as s:
                done = set(s.scalars(select(m.Image.path).where(m.Image.status == "done")))
            if expected <= done:
                return rows
            time.sleep(0.1)
        raise AssertionError(f"not scored in {timeout_s} s: {sorted(expected - done)[:3]}")
    finally:
        runner.stop_event.set()
        th.join(30)


@pytest.mark.parametrize("live", [True, False], ids=["live", "backlog"])
def test_autofocus_failures_fail_qc_and_leave_the_readout(tmp_path: Path, make_runner, live: bool,
                                                          db_url: str) -> None:
    """Live, each frame is judged against the field's scans stored before it, and a field's
    first scan when the next one is scored (its readout recomputed then); from a backlog, the
    claim's own frames of the field count too (they are scored together)."""
    out = tmp_path / "scope"
    out.mkdir()
    scope = Microscope(vendor="imagexpress", plate_format=96, fields=1, hours=32, interval_h=8, seed=1,
                       wells=WELLS, camera=Camera(shape=(288, 384)), seconds_per_image=360.0)
    runner = make_runner(out, quiet_seconds=0.3, rescan_interval=1.0, profile="imagexpress", db_url=db_url)
    runner.setup()
    rows = _scored(runner, scope, out, live)
    failed_focus = {str(out / r["path"]): r["well"] for r in rows if r["autofocus_fail"] == "True"}
    assert sorted(failed_focus.values()) == ["B02", "C08", "C10"], \
        "the simulator's draws changed: pick wells that lose focus again"
    assert {r["timepoint"] for r in rows if r["well"] == "C08" and r["autofocus_fail"] == "True"} == {"1"}

    with runner.store.Session() as s:
        images = {i.path: i for i in s.scalars(select(m.Image))}
        wells = {w: n for w, n in s.execute(select(m.Well.id, m.Well.name))}
        readouts = {(wells[w], t): n for w, t, n in s.execute(
            select(m.WellReadout.well_id, m.WellReadout.time_key, m.WellReadout.n_qc_failed))}
    assert len(images) == len(rows) == 20
    for path, img in images.items():
        if path in failed_focus:
            assert img.qc_passed is False and img.qc["reason"].startswith("out of focus"), (path, img.qc)
            assert img.qc["focus_ratio"] < 0.25, img.qc
        else:
            assert img.qc_passed is True, (path, img.qc)
            assert img.qc["focus_ratio"] > 0.6, (path, img.qc)  # every frame is judged in the end
    statements = []
    listen = (runner.store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    event.listen(*listen)
    try:
        series = runner.store.field_series([i.id for i in images.values()], 2)
    finally:
        event.remove(*listen)
    assert len(statements) == 2, "a claim's neighbourhoods are read in two statements, whatever its size"
    by_id = {i.id: i for i in images.values()}
    for image_id, fs in series.items():
        me = by_id[image_id]
        others = sorted(i.time_key for i in images.values() if (i.well_id, i.field) == (me.well_id, me.field)
                        and i.id != image_id)
        want = [t for t in others if t <= me.time_key][-2:] + [t for t in others if t > me.time_key][:2]
        assert sorted(n.at for n in fs.stored) == want, (image_id, fs)
    repo = Repo(runner.store.engine)
    outcomes = repo.recent_outcomes(CHANNEL_WINDOW)
    assert outcomes["E1"].out_of_focus == outcomes["E1"].qc_failed == 3
    assert focus_warnings(outcomes) == [], "three frames of twenty are a lapse, not an instrument to check"
    assert image_summary(repo, repo.experiment_id("E1"), None).qc_reasons == [("out of focus", 3)], \
        "the report counts failures by kind, not one row per frame's figures"
    sheet = tmp_path / "images.csv"
    export_images(repo, "E1", sheet)
    csv_failed = {r["path"]: r for r in csv_rows(sheet) if r["qc_passed"] == "0"}
    assert set(csv_failed) == set(failed_focus)
    assert all(r["qc_reason"].startswith("out of focus") and float(r["focus_ratio"]) < 0.25 for r in csv_failed.values())
    assert {k for k, n in readouts.items() if n} == {(wells[images[p].well_id], images[p].time_key)
                                                      for p in failed_focus}, readouts
