"""The wide (Incucyte-style) and Prism exports, read back with pandas and checked value by value
against numbers computed here from the stored per-image predictions (not from the readout
table the exports read). The store is a real SQLite file written by the real daemon."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import cells_image, stable_seed, write_tiff

WELLS = {"A1": "=HYPERLINK(\"x\")", "A2": "BDNF", "B1": "BDNF", "B2": "control"}
DOSE = {"A1": "1", "A2": "10", "B1": "10", "B2": "0"}


@pytest.fixture()
def store(tmp_path: Path, make_runner) -> tuple[str, dict]:
    watch = tmp_path / "watch"
    for well in WELLS:
        for field in (1, 2):
            for hours in (0, 12, 24):
                write_tiff(watch / f"VID7_{well}_{field}_{hours // 24:02d}d{hours % 24:02d}h00m.tif",
                           cells_image(stable_seed(well, field, hours), (96, 128)))
    pm = tmp_path / "map.csv"
    with pm.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["well", "condition", "dose"])
        w.writerows([well, cond, DOSE[well]] for well, cond in WELLS.items())
    runner = make_runner(watch, plate_map=str(pm))
    runner.run(once=True)
    return runner.settings.database_url, expected_from_images(runner.settings.database_url.removeprefix("sqlite:///"))


def expected_from_images(db: str) -> dict:
    """Per (well, time key): mean and sd over fields of each class probability, tile-weighted
    fraction, images scored, mean elapsed hours; per time key the earliest acquisition."""
    with sqlite3.connect(db) as c:
        rows = c.execute("""select w.name, i.time_key, i.elapsed_h, i.acquired_at, p.classes, p.prob_mean, p.fraction,
                            p.n_tiles from predictions p join images i on i.id = p.image_id
                            join wells w on w.id = i.well_id where i.qc_passed = 1""").fetchall()
        acquired = c.execute("select time_key, min(acquired_at) from images group by time_key").fetchall()
    groups: dict[tuple[str, int], list] = {}
    for well, key, elapsed, _acq, classes, pm, fr, n_tiles in rows:
        groups.setdefault((well, key), []).append((json.loads(classes), json.loads(pm), json.loads(fr), n_tiles, elapsed))
    out: dict = {"cells": {}, "elapsed": {}, "acquired": {}}
    for (well, key), items in groups.items():
        classes = items[0][0]
        means = np.array([it[1] for it in items])
        tiles = np.array([it[3] for it in items], float)
        fracs = (np.array([it[2] for it in items]) * tiles[:, None]).sum(0) / tiles.sum()
        for k, cls in enumerate(classes):
            out["cells"][(well, key, f"prob:{cls}")] = (means[:, k].mean(), means[:, k].std(ddof=1), len(items))
            out["cells"][(well, key, f"fraction:{cls}")] = (fracs[k], None, len(items))
        e = float(np.mean([it[4] for it in items]))
        out["elapsed"][key] = min(out["elapsed"].get(key, e), e)
        out["classes"] = classes
    for key, acq in acquired:
        out["acquired"][key] = datetime.fromisoformat(acq).replace(tzinfo=timezone.utc)
    return out


def _export(db_url: str, out: Path, *args: str) -> list[Path]:
    r = subprocess.run([sys.executable, "-m", "nscmonitor", "export", "--db", db_url, "--experiment", "E1",
                        "-o", str(out), *args], check=True, capture_output=True, text=True)
    return [Path(line.removeprefix("wrote ")) for line in r.stdout.splitlines() if line.startswith("wrote ")]


def test_wide_sheets_match_images(tmp_path: Path, store) -> None:
    db_url, exp = store
    paths = _export(db_url, tmp_path / "plate.txt", "--format", "wide", "--sd", "--n")
    classes = exp["classes"]
    assert sorted(p.name for p in paths) == sorted(
        [f"plate_prob_{c}.txt" for c in classes] + [f"plate_fraction_{c}.txt" for c in classes])
    keys = sorted(exp["elapsed"])
    for path in paths:
        readout = path.stem.removeprefix("plate_").replace("_", ":", 1)
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        assert lines[0] == "Vessel Name: VID7" and lines[1].startswith("Metric: ")
        start = next(i for i, line in enumerate(lines) if line.startswith("Date Time\t"))
        plate_map = pd.read_csv(StringIO("\n".join(lines[7:start - 1])), sep="\t", header=None, dtype=str,
                                keep_default_na=False)
        assert list(plate_map[0]) == ["Plate Map", "condition", "dose"]
        cond = dict(zip(plate_map.iloc[0, 2:], plate_map.iloc[1, 2:]))
        assert cond["A01"] == "'=HYPERLINK(\"x\")", "formula injection must be escaped"
        assert cond["A02"] == cond["B01"] == "BDNF" and cond["B02"] == "control"
        dose = dict(zip(plate_map.iloc[0, 2:], plate_map.iloc[2, 2:]))
        assert {w: dose[f"{w[0]}0{w[1]}"] for w in DOSE} == DOSE, "plate-map extra columns go into the sheet"
        df = pd.read_csv(path, sep="\t", skiprows=start)
        has_sd = readout.startswith("prob:")
        wells = ["A01", "A02", "B01", "B02"]
        expected_cols = ["Date Time", "Elapsed"]
        for w in wells:
            expected_cols += [w] + ([f"{w} (SD)"] if has_sd else []) + [f"{w} (n)"]
        assert list(df.columns) == expected_cols
        assert len(df) == len(keys) == 3
        for t, key in enumerate(keys):
            assert df["Elapsed"][t] == pytest.approx(exp["elapsed"][key], rel=1e-5)
            got = datetime.strptime(df["Date Time"][t], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
            assert abs((got - exp["acquired"][key]).total_seconds()) < 1
            for w in wells:
                mean, sd, n = exp["cells"][(w, key, readout)]
                assert df[w][t] == pytest.approx(mean, rel=1e-5)
                assert df[f"{w} (n)"][t] == n
                if has_sd:
                    assert df[f"{w} (SD)"][t] == pytest.approx(sd, rel=1e-5, abs=1e-7)


def test_prism_tables_match_images(tmp_path: Path, store) -> None:
    db_url, exp = store
    paths = _export(db_url, tmp_path / "prism.csv", "--format", "prism", "--readout", f"prob:{exp['classes'][0]}",
                    "--readout", f"fraction:{exp['classes'][-1]}")
    assert [p.name for p in paths] == [f"prism_prob_{exp['classes'][0]}.csv",
                                       f"prism_fraction_{exp['classes'][-1]}.csv"]
    keys = sorted(exp["elapsed"])
    for path, readout in zip(paths, (f"prob:{exp['classes'][0]}", f"fraction:{exp['classes'][-1]}")):
        head = ["condition", "dose", "Elapsed (h)"]
        df = pd.read_csv(path, header=list(range(len(head))))
        assert df.columns[0] == tuple(head)
        cols = list(df.columns[1:])
        # replicates side by side: each condition's wells are adjacent columns
        assert [c[0] for c in cols] == ["'=HYPERLINK(\"x\")", "BDNF", "BDNF", "control"]
        assert [c[-1] for c in cols] == ["A01", "A02", "B01", "B02"]
        assert [str(c[1]) for c in cols] == ["1", "10", "10", "0"], "plate-map extra columns go into the table"
        assert len(df) == 3
        for t, key in enumerate(keys):
            assert df[df.columns[0]][t] == pytest.approx(exp["elapsed"][key], rel=1e-5)
            for col in cols:
                assert df[col][t] == pytest.approx(exp["cells"][(col[-1], key, readout)][0], rel=1e-5)


def test_unknown_readout_is_one_line(tmp_path: Path, store) -> None:
    db_url, _ = store
    r = subprocess.run([sys.executable, "-m", "nscmonitor", "export", "--db", db_url, "--experiment", "E1",
                        "-o", str(tmp_path / "x.csv"), "--format", "prism", "--readout", "prob:unicorn"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("nscmonitor: error: unknown readout 'prob:unicorn'")
    assert len(r.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("x_*"))
