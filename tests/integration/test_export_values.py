"""The CSV export, checked value by value against numbers computed here from the stored
per-image predictions (not from the readout table the export reads), on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from conftest import cells_image, csv_rows, stable_seed, write_tiff


def _json(v):
    """A JSON column read with plain SQL: text on SQLite, already decoded by psycopg on PostgreSQL."""
    import json

    return json.loads(v) if isinstance(v, str) else v


def test_export_matches_predictions(tmp_path: Path, make_runner, db_url: str) -> None:
    watch = tmp_path / "watch"
    for well in ("A1", "A2", "B1"):
        for field in (1, 2, 3):
            for hours in (0, 24):
                write_tiff(watch / f"VID7_{well}_{field}_{hours // 24:02d}d{hours % 24:02d}h00m.tif",
                           cells_image(stable_seed(well, field, hours), (128, 160)))
    pm = tmp_path / "map.csv"
    pm.write_text("well,condition,dose\nA1,=HYPERLINK(\"x\"),1\nA2,BDNF 10 ng/ml,10\nB1,control,0\n")
    runner = make_runner(watch, plate_map=str(pm), db_url=db_url)
    runner.run(once=True)
    out = tmp_path / "report.csv"
    subprocess.run([sys.executable, "-m", "nscmonitor", "export", "--db", runner.settings.database_url,
                    "--experiment", "E1", "-o", str(out)], check=True, capture_output=True)
    rows = csv_rows(out)
    with runner.store.engine.connect() as c:
        preds = c.execute(text("""select w.name, i.elapsed_h, p.classes, p.prob_mean, p.fraction, p.n_tiles, p.model_version
                             from predictions p join images i on i.id = p.image_id join wells w on w.id = i.well_id
                             where i.qc_passed = :passed"""), {"passed": True}).fetchall()
    expected: dict[tuple[str, float, str], dict] = {}
    groups: dict[tuple[str, float], list] = {}
    for well, elapsed, classes, pmean, frac, n_tiles, version in preds:
        groups.setdefault((well, elapsed), []).append((_json(classes), _json(pmean), _json(frac), n_tiles, version))
    for (well, elapsed), items in groups.items():
        classes = items[0][0]
        means = np.array([it[1] for it in items])
        tiles = np.array([it[3] for it in items], float)
        fracs = (np.array([it[2] for it in items]) * tiles[:, None]).sum(0) / tiles.sum()
        for k, cls in enumerate(classes):
            expected[(well, elapsed, cls)] = {"prob_mean": means[:, k].mean(), "prob_sd": means[:, k].std(ddof=1),
                                              "fraction": fracs[k], "n_images": len(items), "n_tiles": int(tiles.sum()),
                                              "version": items[0][4]}
    assert len(rows) == len(expected) == 3 * 2 * 4
    for r in rows:
        e = expected[(r["well"], float(r["elapsed_h"]), r["class"])]
        assert float(r["prob_mean"]) == pytest.approx(e["prob_mean"], rel=1e-5)
        assert float(r["prob_sd"]) == pytest.approx(e["prob_sd"], rel=1e-5, abs=1e-7)
        assert float(r["fraction_predicted"]) == pytest.approx(e["fraction"], rel=1e-5)
        assert int(r["n_images"]) == e["n_images"] and int(r["n_tiles"]) == e["n_tiles"]
        assert r["model_version"] == e["version"] and r["experiment"] == "E1" and r["plate"] == "VID7"
        assert r["row"] == r["well"][0] and int(r["col"]) == int(r["well"][1:])
    conds = {r["well"]: r["condition"] for r in rows}
    assert conds["A01"].startswith("'="), "formula injection must be escaped"
    assert conds["A02"] == "BDNF 10 ng/ml" and conds["B01"] == "control"
    assert list(rows[0]) == ["experiment", "plate", "well", "row", "col", "condition", "timepoint", "elapsed_h",
                             "acquired_at", "n_images", "n_tiles", "n_qc_failed", "class", "prob_mean", "prob_sd",
                             "fraction_predicted", "model_version", "n_ood", "acquisition", "scan", "dose"]
    # the test model has no out-of-distribution score: the flag is unavailable, not 0
    assert {r["n_ood"] for r in rows} == {""}
    assert {(r["acquisition"], r["scan"]) for r in rows} == {("", "")}  # Incucyte names count no acquisitions
    assert {r["well"]: r["dose"] for r in rows} == {"A01": "1", "A02": "10", "B01": "0"}
