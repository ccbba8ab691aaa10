"""The daemon stores each image's out-of-distribution score and flag, counts a well's flagged
images in its readout, and the CSV export carries both; on SQLite and PostgreSQL. A real
runner on a tiny ONNX model whose ``ood`` output is the squared norm of its pooled features,
so the score is checked against the engine run here on the daemon's own tiles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from conftest import cells_image, csv_rows, stable_seed, write_tiff


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
