"""Simulated phase contrast keeps the statistics of real Incucyte phase-contrast frames."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nscmonitor.simulate import Artefacts, Camera, Microscope
from nscmonitor.simulate.image_stats import REAL_RANGES, fine_share, frame_stats, slow_illumination, summarise

# What the test holds the simulator to: the real ranges, except slow illumination. Real frames
# read ~0.04 %; this estimator reads 0.1-0.4 % on simulated frames even with every artefact
# off, because cell density varies across a frame, so its bound is that floor (the frames
# read 3.3 % before the instrument's flat-field correction was modelled).
BOUNDS = {**REAL_RANGES, "slow_illumination": (0.0, 0.005)}


def _frames(hours=(48.0, 96.0), plates=3, **kw):
    out = []
    for plate in range(plates):
        for well in ("A01", "A03", "A05", "A07", "A09"):  # the five recipes of the default map
            scope = Microscope(fields=1, hours=max(hours), interval_h=48, seed=0, plate_index=plate, wells=[well],
                               camera=Camera(shape=(520, 704)), **kw)
            out += [scope.render(s).image for s in scope.shots() if s.elapsed_h in hours]
    return out


def test_phase_contrast_statistics_are_inside_the_real_ranges():
    """Median over 30 frames (3 plates x 5 recipes x 48 and 96 h, 704 x 520 like an Incucyte
    crop): pixel contrast, percentiles against background, halo strength, fine-texture power
    share and slow illumination."""
    medians = {k: m for k, (m, _, _) in summarise([frame_stats(f) for f in _frames()]).items()}
    outside = {k: round(v, 4) for k, v in medians.items() if not BOUNDS[k][0] <= v <= BOUNDS[k][1]}
    assert not outside, f"outside the real ranges {BOUNDS}: {outside}"


def test_without_flat_field_correction_the_illumination_shows():
    corrected = frame_stats(_frames(hours=(0.0,), plates=1)[0])["slow_illumination"]
    raw = frame_stats(_frames(hours=(0.0,), plates=1, artefacts=Artefacts(flat_field=False))[0])["slow_illumination"]
    assert raw > 0.01 > BOUNDS["slow_illumination"][1] > corrected


def test_statistics_on_frames_of_known_content():
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 1.0, (256, 320))
    assert fine_share(noise) == pytest.approx(np.pi * (0.5**2 - 0.2**2), abs=0.03)  # white: the band's area
    assert fine_share(ndimage.gaussian_filter(noise, 4.0)) < 0.01
    y, x = np.mgrid[0:20, 0:30]
    vignetted = 100.0 * (1.0 - 0.1 * ((x / 29 - 0.5) ** 2 + (y / 19 - 0.5) ** 2))
    assert slow_illumination(vignetted) == pytest.approx(vignetted.std() / vignetted.mean(), rel=1e-6)
    frame = np.full((256, 256), 1000.0)
    for i in range(10):
        for j in range(10):
            frame[8 + 24 * i:12 + 24 * i, 8 + 24 * j:12 + 24 * j] = 700.0  # 100 small dark cells: 2.4 %
    frame[3, 40:60] = 1300.0  # and a bright halo line, too short to reach the 99th percentile
    s = frame_stats(frame)
    assert s["contrast"] > 0 and s["p1"] == pytest.approx(-0.3, abs=0.01) and s["p99"] == pytest.approx(0.0, abs=1e-9)
