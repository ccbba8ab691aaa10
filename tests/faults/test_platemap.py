"""Plate map: quoted conditions keep their line breaks and commas, and the extra columns
(dose, cell line, ...) reach both CSV exports, formula-escaped, value by value. Real runner,
real SQLite, real export command."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cells_image, write_tiff

from nscmonitor.core.errors import ConfigError
from nscmonitor.core.platemap import load_plate_map

MAP = ('\ufeffwell,condition,dose,cell line,plate\r\n'
       'A1,"BDNF 10 ng/ml,\nthen RA",=1+1,"hNSC ""line 7""",P-east\r\n'
       'A2,+control,0.5,,\r\n'
       '\r\n'
       'B1,"-dox\r\nday 2",@SUM(A1),Ünïcode,\r\n')

EXPECTED = {
    "A01": {"condition": "BDNF 10 ng/ml,\nthen RA", "dose": "'=1+1", "cell line": 'hNSC "line 7"', "map_plate": "P-east"},
    "A02": {"condition": "'+control", "dose": "0.5", "cell line": "", "map_plate": ""},
    "B01": {"condition": "'-dox\nday 2", "dose": "'@SUM(A1)", "cell line": "Ünïcode", "map_plate": ""},
    "B02": {"condition": "", "dose": "", "cell line": "", "map_plate": ""},
}


def test_quoted_newlines_and_extra_columns_are_read_exactly(tmp_path: Path) -> None:
    p = tmp_path / "map.csv"
    p.write_bytes(MAP.encode("utf-8"))
    pm = load_plate_map(p)
    assert pm.conditions == {"A01": "BDNF 10 ng/ml,\nthen RA", "A02": "+control", "B01": "-dox\nday 2"}
    assert pm.attributes["A01"] == {"dose": "=1+1", "cell line": 'hNSC "line 7"', "plate": "P-east"}
    assert pm.attributes["A02"] == {"dose": "0.5"}
    assert pm.attributes["B01"] == {"dose": "@SUM(A1)", "cell line": "Ünïcode"}


@pytest.mark.parametrize(("text", "needle"), [
    ("well,condition\nA1,x,extra\n", "line 2: more values than the 2 columns"),
    ("well,condition\nA1,x\nnot-a-well,y\n", "line 3"),
    ("well,dose\nA1,1\n", "needs the columns 'well' and 'condition'"),
])
def test_bad_plate_map_is_one_line(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "map.csv"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=needle):
        load_plate_map(p)


def test_not_utf8_plate_map(tmp_path: Path) -> None:
    p = tmp_path / "map.csv"
    p.write_bytes("well,condition\nA1,Ünï\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_plate_map(p)


def test_extra_columns_reach_both_exports_value_by_value(tmp_path: Path, make_runner) -> None:
    watch = tmp_path / "watch"
    for i, well in enumerate(("A1", "A2", "B1", "B2")):
        write_tiff(watch / f"VID7_{well}_1_00d00h00m.tif", cells_image(100 + i, (96, 128)))
    pm = tmp_path / "map.csv"
    pm.write_bytes(MAP.encode("utf-8"))
    runner = make_runner(watch, plate_map=str(pm))
    runner.run(once=True)
    out = tmp_path / "report.csv"
    r = subprocess.run([sys.executable, "-m", "nscmonitor", "export", "--db", runner.settings.database_url,
                        "--experiment", "E1", "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for path, per_image in ((out, False), (out.with_name("report_images.csv"), True)):
        with path.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert list(rows[0])[-3:] == ["dose", "cell line", "map_plate"], list(rows[0])
        seen = set()
        for row in rows:
            want = EXPECTED[row["well"]]
            for col in ("dose", "cell line", "map_plate"):
                assert row[col] == want[col], (path.name, row["well"], col, row[col])
            if not per_image:
                assert row["condition"] == want["condition"], (row["well"], row["condition"])
                assert row["plate"] == "VID7"
            seen.add(row["well"])
        assert seen == set(EXPECTED)
