"""The HTML report on a real store written by the real daemon: its numbers against the tidy CSV,
then the page in a real headless Chromium (renders, figures present, no console errors, PDF).
The browser tests skip with the reason where no Chromium is installed; CI installs it."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from conftest import cells_image, csv_rows, stable_seed, write_tiff

WELLS = {"A1": "BDNF", "A2": "BDNF", "B1": "control", "B2": "control", "C1": "<b>CNTF</b> & co"}
VALIDATION = {"0-24h": {"n": 40, "accuracy": 0.6125, "balanced_accuracy": 0.5375},
              "48-72h": {"n": 38, "accuracy": 0.9737, "balanced_accuracy": 0.9712}}


class _Page(HTMLParser):
    """Section ids, figures, save links and the calls table's cells."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.svgs = 0
        self.bands = 0
        self.save_links = 0
        self.scripts = 0
        self.rows: list[list[str]] = []
        self.headers: list[str] = []
        self._in_calls = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id", ""))
        elif tag == "svg":
            self.svgs += 1
        elif tag == "polygon" and a.get("class") == "sd-band":
            self.bands += 1
        elif tag == "a" and "download" in a and a.get("href", "").startswith("data:image/svg+xml;base64,"):
            self.save_links += 1
        elif tag == "script":
            self.scripts += 1
        elif tag == "table" and a.get("class") == "calls":
            self._in_calls = True
        elif tag == "tr" and self._in_calls and "data-well" in a:
            self.rows.append([])
        elif tag in ("td", "th") and self._in_calls:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_calls = False
        elif tag in ("td", "th") and self._cell is not None:
            text = "".join(self._cell).strip()
            (self.rows[-1] if tag == "td" else self.headers).append(text)
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    from nscmonitor.daemon import build_runner
    from nscmonitor.engines.tiny import build_tiny_classifier

    from conftest import settings_for

    from nscmonitor.registry.registry import Registry
    from nscmonitor.store.db import ensure_schema, open_engine

    tmp = tmp_path_factory.mktemp("report")
    run = tmp / "run"
    build_tiny_classifier(run / "model.onnx", input_size=32)
    (run / "metrics.json").write_text(json.dumps({"well": {"by_time": VALIDATION}}))
    watch = tmp / "watch"
    for well in WELLS:
        for field in (1, 2):
            for hours in (0, 12, 24, 48):
                write_tiff(watch / f"VID7_{well}_{field}_{hours // 24:02d}d{hours % 24:02d}h00m.tif",
                           cells_image(stable_seed(well, field, hours), (96, 128)))
    pm = tmp / "map.csv"
    with pm.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["well", "condition"], *WELLS.items()])
    settings = settings_for(tmp, watch, plate_map=str(pm))
    engine = open_engine(settings.database_url)
    ensure_schema(engine)
    Registry(settings.models_dir, engine).register(run)  # the first version becomes the active one
    engine.dispose()
    runner = build_runner(settings, retry_base_s=0.05, poll_interval=0.2)  # serves the registry's active model
    try:
        runner.run(once=True)
    finally:
        runner.stop_event.set()
    return runner.settings.database_url


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nscmonitor", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def report(store: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out") / "report.html"
    r = _cli("report", "--db", store, "--experiment", "E1", "-o", str(out), "--times", "0,48")
    assert r.returncode == 0, r.stderr
    return out


def test_report_numbers_match_the_csv(store: str, report: Path, tmp_path: Path) -> None:
    page = _Page()
    page.feed(report.read_text(encoding="utf-8"))
    assert page.sections == ["summary", "plate-maps", "time-courses", "calls", "qc", "provenance"]
    assert page.scripts == 0
    classes = [h[2:-6] for h in page.headers if h.startswith("P(") and h.endswith(") last")]
    assert classes and page.svgs == 2 + len(classes), "two plate maps (0 h, 48 h) and one time course per class"
    assert page.save_links == page.svgs
    assert page.bands >= 2 * len(classes), "the conditions with replicates draw their sd band"
    csv_path = tmp_path / "tidy.csv"
    assert _cli("export", "--db", store, "--experiment", "E1", "-o", str(csv_path)).returncode == 0
    tidy = csv_rows(csv_path)
    last: dict[str, dict[str, tuple[float, float, int]]] = {}
    for r in tidy:
        if r["prob_mean"] == "":
            continue
        h = float(r["elapsed_h"])
        cur = last.setdefault(r["well"], {}).get(r["class"])
        if cur is None or h > cur[0]:
            last[r["well"]][r["class"]] = (h, float(r["prob_mean"]), int(r["n_images"]))
    assert {row[1] for row in page.rows} == set(last) == {"A01", "A02", "B01", "B02", "C01"}
    col = {h: i for i, h in enumerate(page.headers)}
    for row in page.rows:
        well = row[1]
        for cls in classes:
            h, p, n = last[well][cls]
            assert float(row[col[f"P({cls}) last"]]) == pytest.approx(p, abs=5e-5)
            assert float(row[col["last time (h)"]]) == pytest.approx(h, abs=0.005)
            assert int(row[col["images"]]) == n
    cond = {row[1]: row[2] for row in page.rows}
    assert cond["C01"] == "<b>CNTF</b> & co", "conditions are shown as text, never as markup"


def test_report_provenance(store: str, report: Path) -> None:
    import sqlite3

    html = report.read_text(encoding="utf-8")
    prov = html[html.index('<section id="provenance">'):]
    with sqlite3.connect(store.removeprefix("sqlite:///")) as c:
        version, = c.execute("select version from model_versions where state = 'active'").fetchone()
        engines = dict(c.execute("select engine, count(*) from predictions where model_version = ? group by engine",
                                 (version,)).fetchall())
    assert f"<td>{version}</td>" in prov
    for engine, n in engines.items():
        assert f"{engine} ({n} images)" in prov
    for hours, row in VALIDATION.items():
        assert f"<td>{hours}</td><td class=num>{row['n']}</td><td class=num>{row['accuracy']:.3f}</td>" in prov


@pytest.mark.slow
def test_report_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    from PIL import Image

    from nscmonitor.report.browser import find_browser, run_headless, screenshot

    if find_browser() is None:
        pytest.skip("no Chromium installed (apt-get install chromium); CI installs it")
    png = tmp_path / "report.png"
    r = screenshot(report, png, width=1200, height=1800)
    assert png.is_file(), r.stderr[-2000:]
    assert console_errors(r.stderr) == []
    img = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    assert img.shape[:2] == (1800, 1200)
    non_white = (img < 245).any(axis=2).mean()
    assert non_white > 0.03, f"screenshot is (nearly) blank: {non_white:.1%} non-white pixels"
    # the section rule colour of the headings and the orange of 'neuron' in plate maps/curves
    assert (np.abs(img - np.array([0, 114, 178])).sum(axis=2) < 30).sum() > 500
    dom = run_headless(report, ["--dump-dom"]).stdout
    for sec in ("summary", "plate-maps", "time-courses", "calls", "qc", "provenance"):
        assert f'id="{sec}"' in dom
    assert len(re.findall(r"<svg\b", dom)) >= 3


def console_errors(stderr: str) -> list[str]:
    """Console messages of the page (Chromium logs them as CONSOLE lines with --enable-logging)
    and uncaught errors."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def test_console_check_catches_a_broken_page(tmp_path: Path) -> None:
    from nscmonitor.report.browser import find_browser, screenshot

    if find_browser() is None:
        pytest.skip("no Chromium installed (apt-get install chromium); CI installs it")
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><p>x</p><script>console.error('boom'); undefinedFunction();</script></body></html>")
    r = screenshot(bad, tmp_path / "bad.png", width=400, height=300)
    assert any("boom" in line for line in console_errors(r.stderr)), r.stderr[-2000:]


@pytest.mark.slow
def test_report_pdf(store: str, tmp_path: Path) -> None:
    from nscmonitor.report.browser import find_browser

    out = tmp_path / "r.html"
    r = _cli("report", "--db", store, "--experiment", "E1", "-o", str(out), "--pdf")
    if find_browser() is None:
        assert r.returncode == 1 and "apt-get install chromium" in r.stderr and out.is_file()
        pytest.skip("no Chromium installed: checked the message only")
    assert r.returncode == 0, r.stderr
    pdf = out.with_suffix(".pdf")
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and len(data) > 10_000
    assert len(re.findall(rb"/Type\s*/Page\b", data)) >= 2, "the report spans pages"


def test_report_bad_input_is_one_line(store: str, tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "typo.db"
    r = _cli("report", "--db", f"sqlite:///{missing}", "--experiment", "E1", "-o", str(tmp_path / "x.html"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "database not found" in r.stderr
    assert not missing.exists() and not missing.parent.exists(), "a mistyped path must not create a database"
    r = _cli("report", "--db", store, "--experiment", "E9", "-o", str(tmp_path / "x.html"))
    assert r.returncode == 2 and "no experiment named 'E9'" in r.stderr and "E1" in r.stderr
    r = _cli("report", "--db", store, "--experiment", "E1", "-o", str(tmp_path / "x.html"), "--times", "24,abc")
    assert r.returncode == 2 and "--times" in r.stderr
    assert not (tmp_path / "x.html").exists()
