"""The microscope on disk: pace, growing files vs rename, sidecars, manifest, stop, CLI."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tifffile

from nscmonitor.cli import main
from nscmonitor.simulate import Camera, Microscope

from conftest import csv_rows

CAM = Camera(shape=(48, 64))


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []
        self.on_sleep = None

    def clock(self):
        return self.now

    def sleep(self, s):
        self.sleeps.append(s)
        if self.on_sleep:
            self.on_sleep()
        self.now += s


def _scope(vendor, **kw):
    return Microscope(vendor=vendor, fields=2, hours=4, interval_h=2, seed=3, wells=["A01", "C05"], camera=CAM, **kw)


def test_growing_files_are_partial_during_the_write_and_sidecars_come_at_scan_end(tmp_path):
    ft = FakeTime()
    seen = []

    def look():
        tifs = sorted(tmp_path.rglob("*.tif"))
        htd = list(tmp_path.rglob("*.HTD"))
        seen.append((len(tifs), len(htd), min((p.stat().st_size for p in tifs), default=0)))

    ft.on_sleep = look
    manifest = _scope("imagexpress").run(tmp_path, speed=600, clock=ft.clock, sleep=ft.sleep)
    full = len(tifffile.imread(next(tmp_path.rglob("*.tif"))).tobytes())
    assert any(size < full for _, _, size in seen)  # a watcher can meet a half-written TIFF
    assert seen[0][1] == 0  # no index before the first scan is done
    assert len(list(tmp_path.rglob("*.HTD"))) == 1
    # 3 scans 2 h apart at speed 600: the last image is due 2 * 2 h / 600 = 24 s after the start.
    assert 24.0 <= ft.now < 26.0
    rows = csv_rows(manifest)
    assert len(rows) == 12 and {r["timepoint"] for r in rows} == {"1", "2", "3"}
    for r in rows:
        img = tifffile.imread(tmp_path / r["path"])
        assert img.shape == (48, 64) and img.dtype == np.uint8


def test_rename_vendors_never_show_the_final_name_before_it_is_complete(tmp_path):
    ft = FakeTime()
    states = []
    ft.on_sleep = lambda: states.append((len(list(tmp_path.glob("*.tif.tmp"))), len(list(tmp_path.glob("*.tif")))))
    _scope("incucyte").run(tmp_path, speed=100, clock=ft.clock, sleep=ft.sleep)
    assert any(tmp for tmp, _ in states)
    assert not list(tmp_path.glob("*.tmp"))
    names = sorted(p.name for p in tmp_path.glob("*.tif"))
    assert names[0] == "VID103_A1_1_00d00h00m.tif" and len(names) == 12


def test_same_seed_same_bytes_on_disk(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _scope("harmony").run(a, speed=0)
    _scope("harmony").run(b, speed=0)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 14  # 12 images, the index, the manifest
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    c = tmp_path / "c"
    Microscope(vendor="harmony", fields=2, hours=4, interval_h=2, seed=4, wells=["A01", "C05"], camera=CAM,
               plate_name="NSC-P1-3").run(c, speed=0)
    img = sorted(p for p in files if p.suffix == ".tiff")[0]
    assert (a / img).read_bytes() != (c / img).read_bytes()


def test_stop_event_ends_the_run_with_a_consistent_manifest(tmp_path):
    stop = threading.Event()
    count = []

    def on_frame(frame):
        count.append(frame)
        if len(count) == 5:
            stop.set()

    manifest = _scope("yokogawa").run(tmp_path, speed=0, stop_event=stop, on_frame=on_frame)
    rows = csv_rows(manifest)
    assert len(rows) == 5 == len(list(tmp_path.rglob("*.tif")))
    assert (tmp_path / "NSC-P1-3" / "MeasurementData.mlf").read_text(encoding="utf-8").count("<bts:MeasurementRecord") == 5


def test_cli_simulate_and_tiles(tmp_path, capsys):
    rc = main(["simulate", str(tmp_path / "run"), "--vendor", "cytation", "--plate", "24", "--fields", "1",
               "--hours", "2", "--interval", "2", "--speed", "0", "--wells", "A1,D6", "--frame", "704x520",
               "--bit-depth", "12", "--seed", "9"])
    assert rc == 0
    tifs = sorted((tmp_path / "run").rglob("*.tif"))
    assert [p.name for p in tifs][:2] == ["A1_01_1_1_Phase Contrast_001.tif", "A1_01_1_1_Phase Contrast_002.tif"]
    assert tifffile.imread(tifs[0]).dtype == np.uint16
    assert main(["simulate", str(tmp_path / "bad"), "--wells", "Z99", "--speed", "0"]) == 2
    assert "not in the plate map" in capsys.readouterr().err

    rc = main(["simulate-tiles", str(tmp_path / "tiles"), "--plates", "1", "--tile-size", "32", "--hours", "0,48",
               "--wells-per-condition", "3", "--seed", "2"])
    assert rc == 0
    rows = csv_rows(tmp_path / "tiles" / "tiles.csv")
    assert rows and {r["elapsed_h"] for r in rows} == {"0.0", "48.0"}


@pytest.mark.parametrize("vendor", ["micromanager", "cytation"])
def test_every_vendor_writes_readable_images(tmp_path, vendor):
    manifest = _scope(vendor).run(tmp_path, speed=0)
    rows = csv_rows(manifest)
    assert len(rows) == 12
    assert all(tifffile.imread(tmp_path / r["path"]).shape == (48, 64) for r in rows)


def test_plates_rendered_in_worker_processes_write_the_same_export(tmp_path):
    import hashlib

    from nscmonitor.simulate.labelled_tiles import export_tiles

    def digest(root):
        h = hashlib.sha256()
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(root)).encode() + f.read_bytes())
        return h.hexdigest()

    seen = []
    kw = dict(plates=3, tile_size=32, hours=(0, 48), wells_per_condition=1, seed=5)
    export_tiles(tmp_path / "one", **kw)
    export_tiles(tmp_path / "two", **kw, workers=2, progress=lambda done, total: seen.append((done, total)))
    assert digest(tmp_path / "one") == digest(tmp_path / "two")
    assert len(csv_rows(tmp_path / "two" / "tiles.csv")) > 0
    assert len(seen) == 3 and seen[-1][0] == seen[-1][1]  # a plate at a time, to the end
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert main(["simulate-tiles", str(tmp_path / "x"), "--workers", "-1"]) == 2
