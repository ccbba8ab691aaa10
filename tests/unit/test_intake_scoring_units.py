"""Intake and scoring as units: intake on a real folder (junk dropped before tracking, the one
record of known files), the content verdict, and the channel and elapsed-time rules."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from nscmonitor.config import WatchFolder
from nscmonitor.core.domain import ImageKey
from nscmonitor.core.selection import norm_channel
from nscmonitor.intake.describe import LINK_SKIP, elapsed_hours
from nscmonitor.intake.folder import WatchedFolder
from nscmonitor.intake.intake import Intake
from nscmonitor.intake.known import KnownFiles
from nscmonitor.intake.watcher import DEEP_RESCAN_S
from nscmonitor.scoring.stages import Content, content_of
from nscmonitor.store.writer import Claimed
from conftest import cells_image, write_tiff

OLD = 1_700_000_000.0  # an mtime long past: found settled by the first scan


@pytest.fixture()
def make_intake():
    """A real intake on a real folder (its watcher supervised by each pass, not started: the
    rescans find the files, as in a ``--once`` run), stopped after the test."""
    made: list[Intake] = []

    def make(watch: Path, known: KnownFiles | None = None, *, profile: str = "incucyte",
             channel: str | None = None, clock=None) -> Intake:
        cfg = WatchFolder(path=watch, experiment="E1", profile=profile, quiet_seconds=5.0, polling=True,
                          channel=channel, rescan_interval=0.0)  # every pass rescans
        kw = {"clock": clock} if clock is not None else {}
        made.append(Intake([WatchedFolder.open(cfg, 1, (), poll_interval=0.1, **kw)], known or KnownFiles()))
        return made[-1]

    yield make
    for intake in made:
        intake.stop()


def _discovered(intake: Intake) -> dict[str, object]:
    return {Path(d.path).name: d for _, items in intake.discover() for d in items}


def _old_file(path: Path, data: bytes = b"x") -> Path:
    path.write_bytes(data)
    os.utime(path, (OLD, OLD))
    return path


def test_a_pass_hands_on_images_and_links_and_never_tracks_junk(tmp_path: Path, make_intake) -> None:
    watch = tmp_path / "plate"
    watch.mkdir()
    img = write_tiff(watch / "VID1_A1_1_00d12h00m.tif", cells_image(1))
    os.utime(img, (OLD, OLD))
    for junk in ("Thumbs.db", "._VID1_A1_1_00d12h00m.tif", "VID1_A2_1_00d12h00m.tif.part"):
        _old_file(watch / junk)
    (watch / "VID1_A3_1_00d12h00m.tif").symlink_to(img)
    intake = make_intake(watch)

    found = _discovered(intake)

    assert sorted(found) == ["VID1_A1_1_00d12h00m.tif", "VID1_A3_1_00d12h00m.tif"]
    assert found["VID1_A1_1_00d12h00m.tif"].key.well == "A01"
    assert found["VID1_A1_1_00d12h00m.tif"].elapsed_h == 12.0
    assert found["VID1_A3_1_00d12h00m.tif"].skip_reason == LINK_SKIP
    assert intake.pending() == 0  # junk never entered the readiness tracker
    assert len(intake.known) == 2  # nor the record of known files


def test_the_record_of_known_files_decides_what_is_looked_at_again(tmp_path: Path, make_intake) -> None:
    watch = tmp_path / "plate"
    watch.mkdir()
    img = write_tiff(watch / "VID1_B2_1_01d00h00m.tif", cells_image(2))
    os.utime(img, (OLD, OLD))
    st = img.stat()
    now = [0.0]
    # as the database seeds it; a polled folder (a share): its rescans look at a known file only
    # when its directory changed, or at the hourly deep rescan
    intake = make_intake(watch, KnownFiles({str(img): (st.st_size, st.st_mtime)}), clock=lambda: now[0])
    assert _discovered(intake) == {}

    os.utime(img, (OLD + 60, OLD + 60))  # rewritten in place: a new mtime, the directory's unchanged
    assert _discovered(intake) == {}
    now[0] += DEEP_RESCAN_S
    assert list(_discovered(intake)) == ["VID1_B2_1_01d00h00m.tif"]

    assert _discovered(intake) == {}  # handed on once, not at every rescan
    intake.forget(str(img))  # the database refused it: offered again at the next rescan
    assert list(_discovered(intake)) == ["VID1_B2_1_01d00h00m.tif"]


def test_a_channel_other_than_the_folders_is_skipped_with_the_reason(tmp_path: Path, make_intake) -> None:
    watch = tmp_path / "plate"
    watch.mkdir()
    for name in ("P1_A01_s1_w1.tif", "P1_A01_s1_w2.tif"):
        _old_file(watch / name, b"not read here")
    intake = make_intake(watch, profile="imagexpress", channel="2")
    found = _discovered(intake)
    assert found["P1_A01_s1_w2.tif"].skip_reason is None
    assert found["P1_A01_s1_w1.tif"].skip_reason == "channel 1 is not the scored channel (2)"


def _claimed(previous_hash: str | None, scored: bool) -> Claimed:
    return Claimed(1, "/p.tif", "p.tif", 1, None, None, 1, previous_hash, None, scored)


@pytest.mark.parametrize(("previous", "scored", "sha", "verdict"), [
    (None, False, "a", Content.NEW),  # first decode
    ("a", False, "a", Content.NEW),  # same bytes, not yet scored by the serving model (a promotion)
    ("a", True, "a", Content.SCORED),  # only touched: nothing to redo
    ("a", True, "b", Content.REWRITTEN),
    ("a", False, "b", Content.REWRITTEN),
])
def test_whether_the_content_is_new_is_decided_from_the_claim_and_the_bytes(previous, scored, sha, verdict) -> None:
    assert content_of(_claimed(previous, scored), sha) is verdict


def test_channel_numbers_and_names_compare_as_the_user_means_them() -> None:
    assert norm_channel("02") == norm_channel("2") == "2"
    assert norm_channel(" GFP ") == norm_channel("gfp")
    assert norm_channel("1") != norm_channel("2")


def test_elapsed_time_comes_from_the_name_first_then_the_induction_time() -> None:
    acquired = datetime(2026, 1, 2, 6, 0, tzinfo=timezone.utc)
    induction = datetime(2026, 1, 1, 0, 0, tzinfo=timezone.utc)
    named = ImageKey("P1", "A01", 0, 0, elapsed_h=12.0)
    unnamed = ImageKey("P1", "A01", 0, 0)
    assert elapsed_hours(named, acquired, induction) == 12.0
    assert elapsed_hours(unnamed, acquired, induction) == 30.0
    assert elapsed_hours(unnamed, acquired, None) is None


def test_where_the_listing_gives_sizes_known_files_get_no_look_of_their_own(tmp_path: Path, make_intake,
                                                                          monkeypatch) -> None:
    """On Windows a directory listing carries each file's size and mtime (``DirEntry.stat``
    makes no call): a rescan then looks only at files the listing shows new or changed, instead
    of one ``lstat`` (on a share, a round trip) per file. Forced on here to test the rule."""
    watch = tmp_path / "plate"
    watch.mkdir()
    files = [write_tiff(watch / f"VID1_B{i}_1_01d00h00m.tif", cells_image(i)) for i in range(1, 4)]
    for f in files:
        os.utime(f, (OLD, OLD))
    known = KnownFiles({str(f): (f.stat().st_size, f.stat().st_mtime) for f in files})
    intake = make_intake(watch, known)
    intake.folders[0].watcher.listing_stats = True
    looked: list[str] = []
    real = os.lstat

    def counting(path, *a, **kw):
        looked.append(os.fspath(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(os, "lstat", counting)
    assert _discovered(intake) == {}
    assert not set(looked) & {str(f) for f in files}  # the known, unchanged files: no look of their own
    files[1].write_bytes(files[1].read_bytes() + b"\0" * 16)  # rewritten in place: the listing shows it
    os.utime(files[1], (OLD + 60, OLD + 60))
    new = write_tiff(watch / "VID1_C1_1_01d00h00m.tif", cells_image(9))
    os.utime(new, (OLD, OLD))
    assert sorted(_discovered(intake)) == ["VID1_B2_1_01d00h00m.tif", "VID1_C1_1_01d00h00m.tif"]


def test_a_long_rescan_is_walked_in_slices_and_every_file_is_handed_on_once(tmp_path: Path, make_intake) -> None:
    """A rescan of a folder holding months of images takes minutes on a share; the daemon scores
    between its slices. Here each pass walks 100 files: the folder's 450 are handed on over five
    passes, each once, and the intake counts the rescan as pending until it has ended (so a
    ``--once`` run does not stop half-way)."""
    watch = tmp_path / "plate"
    for d in range(3):
        (watch / f"day{d}").mkdir(parents=True)
        for i in range(150):
            _old_file(watch / f"day{d}" / f"VID1_A{i % 12 + 1}_{i + 1}_0{d}d00h00m.tif")
    intake = make_intake(watch)
    intake.rescan_slice_s, intake.rescan_chunk = 0.0, 100
    seen: list[str] = []
    passes = 0
    while True:
        found = [d.path for _, items in intake.discover() for d in items]
        seen += found
        passes += 1
        # the daemon's loop goes on to the next slice at once while a rescan is in progress
        assert intake.rescanning() == (intake.pending() > 0)
        if intake.pending() == 0:
            break
        assert passes < 20
    assert len(seen) == len(set(seen)) == 450 and passes == 6  # five slices, and the pass that ends the walk
    watcher = intake.folders[0].watcher
    assert watcher.last_scan["files"] == 450 and watcher.last_scan["deep"]
    assert watcher.observer is None  # not started (a --once pass): no poller walks the tree beside the rescans
