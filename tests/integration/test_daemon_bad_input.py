"""Bad input gets a clear reason and loses nothing; the daemon keeps scoring after it."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

from nscmonitor.store.reads import Repo

from conftest import cells_image, csv_rows, write_tiff


def huge_header_tiff(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A valid little-endian TIFF header that claims a 10-gigapixel frame (a decompression
    bomb in spirit): it must be refused from the header, never allocated."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, width * height % (1 << 32))]
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        ifd += struct.pack("<HHII", tag, typ, count, value) if typ == 4 else struct.pack("<HHIHH", tag, typ, count, value, 0)
    ifd += struct.pack("<I", 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd)
    return path


def test_bad_files_are_quarantined_with_reasons_and_good_files_still_scored(tmp_path: Path, make_runner) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    good_before = write_tiff(watch / "VID1_A1_1_00d00h00m.tif", cells_image(1))
    (watch / "VID1_A2_1_00d00h00m.tif").write_bytes(b"")
    full = write_tiff(tmp_path / "full.tif", cells_image(3, (256, 256))).read_bytes()
    (watch / "VID1_A3_1_00d00h00m.tif").write_bytes(full[: len(full) // 3])
    import numpy as np

    (watch / "VID1_A4_1_00d00h00m.tif").write_bytes(np.random.default_rng(0).bytes(5000))
    huge_header_tiff(watch / "VID1_A5_1_00d00h00m.tif")
    write_tiff(watch / "IMG_0001.tif", cells_image(4))
    good_after = write_tiff(watch / "VID1_B1_1_00d00h00m.tif", cells_image(5))
    runner = make_runner(watch, profile="incucyte", max_attempts=3)
    runner.run(once=True)

    repo = Repo(runner.store.engine)
    by_name = {Path(r.path).name: r for r, _ in repo.images(1)}
    assert by_name[good_before.name].status == "done" and by_name[good_after.name].status == "done"
    expected = {
        "VID1_A2_1_00d00h00m.tif": "empty file",
        "VID1_A3_1_00d00h00m.tif": "file is incomplete",
        "VID1_A4_1_00d00h00m.tif": "not a readable TIFF",
        "VID1_A5_1_00d00h00m.tif": "above the cap",
        "IMG_0001.tif": "does not match",
    }
    for fname, reason in expected.items():
        rec = by_name[fname]
        assert rec.status == "quarantined", (fname, rec.status, rec.error)
        assert reason in rec.error, (fname, rec.error)
    assert "gave up after 3 attempts" in by_name["VID1_A3_1_00d00h00m.tif"].error

    db = runner.settings.database_url
    out = subprocess.run([sys.executable, "-m", "nscmonitor", "status", "--json", "--db", db],
                         capture_output=True, text=True)
    status = json.loads(out.stdout)
    shown = {Path(e["path"]).name: e["reason"] for e in status["errors"]}
    for fname, reason in expected.items():
        assert reason in shown[fname]
    assert status["queue"]["quarantined"] == 5 and status["queue"]["done"] == 2

    report = tmp_path / "report.csv"
    subprocess.run([sys.executable, "-m", "nscmonitor", "export", "--db", db, "--experiment", "E1", "-o", str(report)],
                   check=True, capture_output=True)
    rows = csv_rows(tmp_path / "report_images.csv")
    per_image = {Path(r["path"]).name: r for r in rows}
    for fname, reason in expected.items():
        assert per_image[fname]["status"] == "quarantined" and reason in per_image[fname]["error"]
    for p in (good_before, good_after):
        assert p.exists()
    assert (watch / "VID1_A2_1_00d00h00m.tif").stat().st_size == 0, "originals are never modified"


def test_images_prepared_on_several_threads_keep_their_outcomes_and_the_time_adds_up(tmp_path: Path,
                                                                                       make_runner) -> None:
    import time

    watch = tmp_path / "watch"
    watch.mkdir()
    good = [write_tiff(watch / f"VID1_A{i}_1_00d00h00m.tif", cells_image(i, (512, 512))) for i in range(1, 7)]
    (watch / "VID1_B1_1_00d00h00m.tif").write_bytes(b"II*\x00garbage")
    (watch / "VID1_B2_1_00d00h00m.tif").write_bytes(b"")
    runner = make_runner(watch, profile="incucyte", max_attempts=1)
    runner.scorer.prepare_workers = 4
    runner.scorer.next_claim = 8  # one claim: all eight prepared side by side
    t0 = time.perf_counter()
    runner.run(once=True)
    wall = time.perf_counter() - t0

    by_name = {Path(r.path).name: r for r, _ in Repo(runner.store.engine).images(1)}
    assert all(by_name[p.name].status == "done" for p in good)
    assert by_name["VID1_B1_1_00d00h00m.tif"].status == "quarantined"
    assert "empty file" in by_name["VID1_B2_1_00d00h00m.tif"].error
    t = runner.timings
    assert t.decode > 0 and t.preprocess > 0
    # booked as shares of the step's wall time, not the threads' sum: never more than the run took
    assert t.decode + t.preprocess + t.inference + t.store <= wall
