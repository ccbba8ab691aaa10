"""A small stand-in for the simulator's labelled-tiles export (same tiles.json/tiles.csv
format), so training can be tested and demonstrated before or without ``nscmonitor.simulate``.

The tiles are crude phase-contrast-like cultures whose fate cues grow with hours since
induction (a logistic commitment curve, science.md §3.4): at 0 h every class looks like
undifferentiated NSCs, so accuracy by time is meaningful. They are not the simulator:
prefer ``nscmonitor.simulate.labelled_tiles.export_tiles`` when it exists.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from nscmonitor.core.domain import MULTICLASS, well_name

FATES = MULTICLASS
T50 = {"neuron": 30.0, "astrocyte": 40.0, "oligodendrocyte": 48.0}


def commitment(t: float, fate: str, tau: float = 10.0) -> float:
    if fate not in T50:
        return 0.0
    return float(1.0 / (1.0 + np.exp(-(t - T50[fate]) / tau)))


def _line(img: np.ndarray, y: float, x: float, angle: float, length: float, value: float) -> None:
    n = max(2, int(length))
    ys = np.clip((y + np.sin(angle) * np.arange(n)).astype(int), 0, img.shape[0] - 1)
    xs = np.clip((x + np.cos(angle) * np.arange(n)).astype(int), 0, img.shape[1] - 1)
    img[ys, xs] += value


def _disk(img: np.ndarray, y: float, x: float, r: float, value: float) -> None:
    yy, xx = np.ogrid[:img.shape[0], :img.shape[1]]
    img[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] += value


def _cell(img: np.ndarray, rng: np.random.Generator, fate: str, s: float) -> None:
    """One cell, interpolated from the NSC look (s=0) to its fate's look (s=1)."""
    h, w = img.shape
    y, x = rng.uniform(0, h), rng.uniform(0, w)
    if fate == "astrocyte":
        _disk(img, y, x, 3 + 9 * s, -0.25 * (1 - 0.6 * s))
    elif fate == "neuron":
        _disk(img, y, x, 3 - 1 * s, -0.25 + 0.7 * s)
        for _ in range(int(round(4 * s))):
            _line(img, y, x, rng.uniform(0, 2 * np.pi), 6 + 20 * s, 0.35)
    elif fate == "oligodendrocyte":
        _disk(img, y, x, 3, -0.3)
        for _ in range(int(round(10 * s))):
            _line(img, y, x, rng.uniform(0, 2 * np.pi), 3 + 8 * s, -0.3)
    else:
        _disk(img, y, x, 3, -0.25)


def render_tile(rng: np.random.Generator, fate: str, t: float, size: int = 64, n_cells: int = 6,
                purity: float = 0.8) -> np.ndarray:
    """uint8 tile; a fraction ``1 - purity`` of cells take another fate, as in mixed wells."""
    img = np.zeros((size, size), np.float32)
    for _ in range(n_cells):
        f = fate if rng.random() < purity else FATES[rng.integers(len(FATES))]
        _cell(img, rng, f, commitment(t, f) * rng.uniform(0.7, 1.0))
    phase = img - gaussian_filter(img, 4.0) * 0.8
    out = 140 + 60 * gaussian_filter(phase, 0.8) + rng.normal(0, 4, img.shape)
    out *= rng.uniform(0.9, 1.1)
    return np.clip(out, 0, 255).astype(np.uint8)


def write_synthetic_tiles(out_dir: str | Path, *, plates: int = 2, wells_per_class: int = 3,
                          timepoints: tuple[float, ...] = (0, 12, 24, 48, 72, 96), fields: int = 2,
                          tile_size: int = 64, pixel_size_um: float = 1.24, seed: int = 0,
                          classes: tuple[str, ...] = FATES, split: bool = True) -> Path:
    """Write ``tiles.json`` + ``tiles.csv`` + TIFF tiles. With ``split`` and three or more
    plates the last plate is test, the one before val (held-out plates, as in the docs run);
    with two, the first trains and the second's wells alternate between val and test (no
    validation on a training plate); with one, wells are split in turn."""
    import tifffile

    out = Path(out_dir)
    (out / "tiles").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(plates):
        plate = f"P{p + 1}"
        for ci, fate in enumerate(classes):
            for k in range(wells_per_class):
                well = well_name(ci, k)
                sp = _split(p, plates, k) if split else ""
                for ti, t in enumerate(timepoints):
                    for f in range(1, fields + 1):
                        rel = f"tiles/{plate}_{well}_f{f}_t{ti + 1}.tif"
                        tifffile.imwrite(str(out / rel), render_tile(rng, fate, t, tile_size))
                        fr = {c: (1.0 if c == fate else 0.0) for c in FATES}
                        rows.append([rel, plate, well, f, ti + 1, t, f"{fate}-inducer", fate,
                                     *[fr[c] for c in FATES], sp])
    header = ["path", "plate", "well", "field", "timepoint", "elapsed_h", "condition", "label",
              *[f"frac_{c}" for c in FATES], "split"]
    tmp = out / "tiles.csv.part"
    with tmp.open("w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    os.replace(tmp, out / "tiles.csv")
    (out / "tiles.json").write_text(json.dumps(
        {"pixel_size_um": pixel_size_um, "tile_size": tile_size, "classes": list(classes), "seed": seed}))
    return out


def _split(plate: int, plates: int, k: int) -> str:
    if plates >= 3:
        return "test" if plate == plates - 1 else "val" if plate == plates - 2 else "train"
    if plates == 2:
        return "train" if plate == 0 else ("val", "test")[k % 2]
    return ("train", "val", "test")[k % 3]
