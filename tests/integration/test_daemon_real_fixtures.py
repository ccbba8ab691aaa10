"""Real instrument output (third-party files in the shared folder): the daemon must place,
decode and QC what instruments really write."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import select, text

from conftest import with_pixel_limit
from nscmonitor.store import models as m


def _rows(runner):
    with runner.store.Session() as s:
        return s.execute(select(m.Image, m.Well, m.Plate).outerjoin(m.Well, m.Well.id == m.Image.well_id)
                         .outerjoin(m.Plate, m.Plate.id == m.Well.plate_id)).all()


def test_imagexpress_folders_are_placed_and_decoded(real_fixtures: Path, make_runner) -> None:
    root = real_fixtures
    for sub in ("ImageXpress_exported", "ImageXpress"):
        runner = make_runner(root / sub, experiment=sub)
        runner.run(once=True)
    rows = _rows(runner)
    tifs = [p for p in root.rglob("*") if p.suffix.lower() in (".tif", ".tiff")
            and p.relative_to(root).parts[0].startswith("ImageXpress")]
    thumbs = [p for p in tifs if "_thumb" in p.name]
    assert thumbs, "fixture should contain thumbnails"
    by_path = {img.path: (img, w, p) for img, w, p in rows}
    for t in thumbs:
        assert str(t) not in by_path, f"thumbnail was queued: {t}"
    images = [p for p in tifs if p not in thumbs]
    for path in images:
        img, well, plate = by_path[str(path)]
        assert img.status == "done", (path, img.status, img.error)
        assert img.width and img.height
        # MetaXpress glues a GUID to the last token (_s1 + 17654C10-...): strip it first
        name = re.sub(r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}(?=\.)", "", path.name)
        well_m = re.search(r"_([A-P])(\d{2})(?:_|\.)", name)
        assert well.name == f"{well_m.group(1)}{well_m.group(2)}"
        site = re.search(r"_s(\d+)", name)
        assert img.field == (int(site.group(1)) if site else 1)
        ch = re.search(r"_w(\d)", name)
        assert img.channel == (ch.group(1) if ch else None)
        # the scan: TimePoint_n, else (an acquisition of one time point) the acquisition folder
        tp = re.search(r"TimePoint_(\d+)", str(path)) or re.search(r"/\d{4}-\d{2}-\d{2}/(\d+)/", str(path))
        assert img.timepoint == (int(tp.group(1)) if tp else None)
        rel = path.relative_to(root).parts
        if rel[0] == "ImageXpress_exported":
            assert plate.name == rel[1]  # 9987_Plate_3420 etc.: one plate per folder, same name token
    deflated = [p for p in images if "Projection-Mix" in str(p)]
    assert deflated and all(by_path[str(p)][0].status == "done" for p in deflated)
    plate_3435 = [img for img, w, p in rows if p is not None and p.name == "9987_Plate_3435"]
    assert {img.timepoint for img in plate_3435} == {1, 2}


def test_cv8000_blank_frames_are_flagged_and_left_out(real_fixtures: Path, make_runner) -> None:
    root = real_fixtures / "CV8000"
    runner = make_runner(root, experiment="cv8000")
    runner.run(once=True)
    rows = _rows(runner)
    tifs = [p for p in root.rglob("*.tif") if re.search(r"_T\d{4}F\d{3}", p.name)]
    assert len(tifs) == len(rows) > 0, "every CV8000 image is stored; correction images are not"
    for img, well, plate in rows:
        assert img.status == "done" and img.qc_passed is False and img.qc["blank"] is True, img.path
    with runner.store.Session() as s:
        readouts = s.scalars(select(m.WellReadout)).all()
    assert readouts
    assert all(r.n_images == 0 and r.n_qc_failed > 0 and r.prob_mean == [] for r in readouts)


def test_imagexpress_pixel_sizes_are_read_and_a_4x_frame_is_flagged(real_fixtures: Path, make_runner,
                                                                     tmp_path: Path) -> None:
    """MetaXpress writes the pixel size only in its MetaSeries XML (binning included), not in
    resolution tags. Read from there, the 20x frames (1.37 um/px) are resampled to a model
    trained at 1.24 and served, and the 4x frames (13.55 um/px) are flagged as another
    magnification by the daemon's pixel-size check (the score's threshold is out of reach, so
    only that check can flag); until 2026-12-05 both were served at their own scale, unflagged."""
    from nscmonitor.engines.tiny import build_tiny_classifier
    from nscmonitor.readers.decode import decode

    root = real_fixtures / "ImageXpress"
    frames = [p for p in root.rglob("*.tif") if "_thumb" not in p.name]
    by_folder = {p.relative_to(root).parts[0]: decode(p).pixel_size_um for p in frames}
    assert by_folder["1well-3C-2S-Zmix-T"] == pytest.approx(13.5504)  # 4X Plan Apo, binning 8
    assert by_folder["Projection-Mix"] == pytest.approx(1.3668)  # 20X Plan Apo Lambda, binning 4
    exported = next((real_fixtures / "ImageXpress_exported").rglob("*.TIF"))
    assert decode(exported).pixel_size_um == pytest.approx(1.3672)

    model = tmp_path / "models" / "scale.onnx"
    build_tiny_classifier(model, input_size=32, pixel_size_um=1.24, ood_threshold=1e9)
    with_pixel_limit(model, 1.5)
    runner = make_runner(root, model=model, experiment="imx")
    runner.run(once=True)
    with runner.store.engine.connect() as c:
        rows = c.execute(text("select i.path, i.width, p.ood from predictions p join images i on i.id = p.image_id")
                         ).fetchall()
    with runner.store.Session() as s:
        acquired = {Path(p).relative_to(root).parts[0]: a
                    for p, a in s.execute(select(m.Image.path, m.Image.acquired_at)).all()}
    # the files were copied long after they were taken: their MetaSeries times, not their mtimes
    assert acquired["1well-3C-2S-Zmix-T"].date().isoformat() == "2024-04-22"
    assert len(rows) == len(frames)
    from nscmonitor.ops.health import CHANNEL_WINDOW, mixed_channel_warnings
    from nscmonitor.store.reads import Repo

    # no channel setting: every wavelength of every site is scored into the same readouts, and status says so
    (warning,) = mixed_channel_warnings(Repo(runner.store.engine).recent_outcomes(CHANNEL_WINDOW))
    assert warning.startswith("experiment imx: its newest scored images are of 4 channels (1, 2, 3, 4)")
    for path, width, flag in rows:
        four_x = Path(path).relative_to(root).parts[0] == "1well-3C-2S-Zmix-T"
        assert bool(flag) is four_x, path
        assert width in (256, 512)  # the original frame is what is stored, not the resampled one
