"""The HTML report says what the dashboard says about images unlike the model's training data:
a real daemon scores a plate on a tiny model whose OOD threshold lies between the frames of
cells and the frames of stripes one well holds; the report counts them, hatches that well in
every plate map, and a model that flags nothing leaves the page without either."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cells_image, settings_for, stable_seed, stripes_image, tiny_model_flagging_stripes, write_tiff

WELLS = ("A1", "A2", "B1", "B2")


def _report(tmp_path: Path, model: Path) -> str:
    from nscmonitor.daemon import build_runner

    watch = tmp_path / "watch"
    i = 0
    for well in WELLS:
        for hours in (0, 24):
            for field in (1, 2):
                img = stripes_image(i) if well == "B2" else cells_image(stable_seed("cells", i), (64, 64))
                write_tiff(watch / f"VID7_{well}_{field}_{hours // 24:02d}d{hours % 24:02d}h00m.tif", img)
                i += 1
    runner = build_runner(settings_for(tmp_path, watch), model=model, retry_base_s=0.05, poll_interval=0.2)
    try:
        runner.run(once=True)
    finally:
        runner.stop_event.set()
    out = tmp_path / "report.html"
    r = subprocess.run([sys.executable, "-m", "nscmonitor", "report", "--db", runner.settings.database_url,
                        "--experiment", "E1", "-o", str(out), "--times", "0,24"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out.read_text(encoding="utf-8")


def test_the_report_counts_and_hatches_the_wells_of_unlike_images(tmp_path: Path) -> None:
    model = tiny_model_flagging_stripes(tmp_path / "models" / "ood.onnx", n=16)
    page = _report(tmp_path, model)
    assert "4 of the 16 scored images (25%) of plate VID7, in 1 well, are unlike" in page
    assert "<span class=warn>4 unlike the model's training data</span>" in page  # the summary
    hatched = re.findall(r'<circle[^>]*class="ood"[^>]*><title>([^<]*)</title>', page)
    assert len(hatched) == 2  # two plate maps (0 and 24 h), the one well each
    assert all(t.startswith("B02:") and "2 image(s) unlike the training data" in t for t in hatched)
    assert page.count("hatched: images unlike the training data") == 2


@pytest.mark.parametrize("threshold", [1e9, None])
def test_a_model_that_flags_nothing_leaves_the_report_without_notice_or_hatching(tmp_path: Path,
                                                                                  threshold: float | None) -> None:
    from nscmonitor.engines.tiny import build_tiny_classifier

    model = tmp_path / "models" / "plain.onnx"
    build_tiny_classifier(model, input_size=32, ood_threshold=threshold)
    page = _report(tmp_path, model)
    assert "unlike the model" not in page and 'class="ood"' not in page and "hatched:" not in page


@pytest.mark.slow
def test_the_hatching_renders_in_headless_chromium(tmp_path: Path) -> None:
    """The hatch is an SVG pattern referenced by id inside a page of several SVGs: a real
    browser must draw it (its orange strokes appear in the screenshot) with no console error."""
    import numpy as np
    from PIL import Image

    from nscmonitor.core.palette import OOD_RGB
    from nscmonitor.report.browser import find_browser, screenshot

    if find_browser() is None:
        pytest.skip("no Chromium installed (apt-get install chromium); CI installs it")
    model = tiny_model_flagging_stripes(tmp_path / "models" / "ood.onnx", n=16)
    page = tmp_path / "page.html"
    page.write_text(_report(tmp_path, model), encoding="utf-8")
    png = tmp_path / "page.png"
    r = screenshot(page, png, width=1200, height=1400)
    assert png.is_file(), r.stderr[-2000:]
    assert [line for line in r.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line] == []
    img = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    hatch = (np.abs(img - np.array(OOD_RGB)).sum(axis=2) < 40).sum()
    assert hatch > 20, hatch
