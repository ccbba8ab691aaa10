"""The daemon stores each image's out-of-distribution score and flag, counts a well's flagged
images in its readout, and the CSV export carries both; on SQLite and PostgreSQL. A real
runner on a tiny ONNX model whose ``ood`` output is the squared norm of its pooled features,
so the score is checked against the engine run here on the daemon's own tiles. A file whose
resolution tags say it was taken at another magnification is flagged whatever its score,
when the model's OOD record carries the pixel-size limit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from conftest import cells_image, csv_rows, stable_seed, with_pixel_limit, write_tiff


@pytest.mark.parametrize("threshold,flagged", [(0.0, True), (1e9, False)])
def test_daemon_stores_the_flag_and_the_export_carries_it(tmp_path: Path, make_runner, db_url: str,
                                                          threshold: float, flagged: bool) -> None:
    from nscmonitor.engines.ort import OrtCpuEngine
    from nscmonitor.engines.tiny import build_tiny_classifier
    from nscmonitor.readers.decode import decode
    from nscmonitor.scoring.preprocess import Preprocess

    model = tmp_path / "models" / "ood.onnx"
    meta = build_tiny_classifier(model, input_size=32, ood_threshold=threshold)
    watch = tmp_path / "watch"
    for well in ("A1", "B2"):
        for hours in (0, 24):
            write_tiff(watch / f"VID3_{well}_1_{hours // 24:02d}d{hours % 24:02d}h00m.tif",
                       cells_image(stable_seed("ood", well, hours), (96, 128)))
    runner = make_runner(watch, model=model, db_url=db_url)
    runner.run(once=True)
    with runner.store.engine.connect() as c:
        stored = c.execute(text("select i.path, p.ood_score, p.ood from predictions p join images i on i.id = p.image_id"
                                )).fetchall()
        readouts = c.execute(text("select n_images, n_ood from well_readouts")).fetchall()
    assert len(stored) == 4 and len(readouts) == 4
    engine = OrtCpuEngine(model, meta)
    engine.load()
    try:
        pre = Preprocess.from_metadata(meta)
        for path, score, flag in stored:
            pixels = decode(path).pixels
            grid = pre.tiles(pixels, factor=pre.factor(None))
            want = float(np.mean(engine.infer_with_ood(grid.tiles)[1]))
            assert score == pytest.approx(want, rel=1e-4)
            assert bool(flag) is flagged
    finally:
        engine.close()
    assert all(n_ood == (n_images if flagged else 0) for n_images, n_ood in readouts)
    out = tmp_path / "report.csv"
    subprocess.run([sys.executable, "-m", "nscmonitor", "export", "--db", runner.settings.database_url,
                    "--experiment", "E1", "-o", str(out)], check=True, capture_output=True)
    assert {r["n_ood"] for r in csv_rows(out)} == {"1" if flagged else "0"}
    images = csv_rows(out.with_name("report_images.csv"))
    assert {r["ood"] for r in images} == {"1" if flagged else "0"}
    assert all(float(r["ood_score"]) > 0 for r in images)


@pytest.mark.parametrize("limit", [1.5, None])
def test_a_file_of_another_pixel_size_is_flagged_through_the_daemon(tmp_path: Path, make_runner, db_url: str,
                                                                    limit: float | None) -> None:
    """Three real TIFFs of one culture image: at the model's 1.24 um/px, at 2.48 um/px (a 5x
    objective; the daemon resamples it by its resolution tags) and without tags. The score's
    threshold is out of reach, so only the pixel-size check can flag; a model without the
    limit (exported before it) flags none."""
    from nscmonitor.engines.tiny import build_tiny_classifier

    model = tmp_path / "models" / "ood.onnx"
    build_tiny_classifier(model, input_size=32, pixel_size_um=1.24, ood_threshold=1e9)
    with_pixel_limit(model, limit)
    watch = tmp_path / "watch"
    pixels = cells_image(stable_seed("ood-scale"), (96, 128))
    for well, um in (("A1", 1.24), ("B2", 2.48)):
        write_tiff(watch / f"VID3_{well}_1_00d00h00m.tif", pixels, resolution=(1e4 / um, 1e4 / um),
                   resolutionunit="CENTIMETER")
    write_tiff(watch / "VID3_C3_1_00d00h00m.tif", pixels)
    runner = make_runner(watch, model=model, db_url=db_url)
    runner.run(once=True)
    with runner.store.engine.connect() as c:
        rows = c.execute(text("select i.path, p.ood_score, p.ood from predictions p "
                              "join images i on i.id = p.image_id")).fetchall()
    got = {Path(path).name.split("_")[1]: (score, bool(flag)) for path, score, flag in rows}
    assert set(got) == {"A1", "B2", "C3"}
    assert all(score is not None and score < 1e9 for score, _ in got.values())
    assert got["B2"][0] != pytest.approx(got["A1"][0], rel=1e-3)  # resampled by its tags: other tiles
    assert got["A1"][1] is False and got["C3"][1] is False
    assert got["B2"][1] is (limit is not None)


def test_run_pixel_size_flag_gives_untagged_files_their_folders_pixel_size(tmp_path: Path) -> None:
    """``nscmonitor run --watch DIR --pixel-size 2.48``: an untagged file of that folder is read
    as 2.48 um/px, so a model trained at 1.24 (at most 1.5x) flags it as another
    magnification; without the flag the same file is served at its own scale, unflagged."""
    from nscmonitor.engines.tiny import build_tiny_classifier

    model = tmp_path / "models" / "ood.onnx"
    build_tiny_classifier(model, input_size=32, pixel_size_um=1.24, ood_threshold=1e9)
    with_pixel_limit(model, 1.5)
    for flag, want in (([], False), (["--pixel-size", "2.48"], True)):
        root = tmp_path / ("set" if flag else "unset")
        write_tiff(root / "watch" / "VID3_C3_1_00d00h00m.tif", cells_image(stable_seed("ood-flag"), (96, 128)))
        db = f"sqlite:///{root / 'nsc.db'}"
        p = subprocess.run([sys.executable, "-m", "nscmonitor", "run", "--db", db, "--watch", str(root / "watch"),
                            "--model", str(model), "--quiet", "0", "--no-schedule", "--once", *flag],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        from nscmonitor.store.db import open_engine

        with open_engine(db).connect() as c:
            flags = c.execute(text("select p.ood from predictions p")).fetchall()
        assert [bool(f) for f, in flags] == [want]
