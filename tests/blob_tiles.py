"""Labelled raw tiles with a known class signal, and the tile sets the int8 builds take, for
the tests of the int8 recipe, bias correction and the mixed-precision search."""

from __future__ import annotations

import numpy as np

from nscmonitor.engines.calibration import TileSet
from nscmonitor.scoring.preprocess import Preprocess

SIZE = 32


def blobs(n: int, seed: int, *, two_wells: bool = False) -> tuple[np.ndarray, list[str]]:
    """Raw 12-bit tiles whose blob density and size grow with the class (4 classes), one well
    per class (``two_wells``: two, alternating every four tiles)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    out, wells = [], []
    for i in range(n):
        cls = i % 4
        img = rng.normal(300, 20, (SIZE, SIZE))
        for _ in range(2 + 3 * cls):
            cy, cx = rng.uniform(0, SIZE, 2)
            r = rng.uniform(1.5, 2 + 1.5 * cls)
            img += (800 + 400 * cls) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        out.append(img.clip(0, 4095).astype(np.uint16))
        row = "B" if two_wells and i % 8 >= 4 else "A"
        wells.append(f"P1/{row}{cls + 1:02d}")
    return np.stack(out), wells


def tileset(meta, raw, wells, source) -> TileSet:
    """The raw tiles in the model's input contract (the daemon's preprocessing)."""
    pre = Preprocess.from_metadata(meta)
    x = np.concatenate([pre.tiles(t).tiles for t in raw])
    return TileSet(x, tuple(wells), tuple("" for _ in wells), source)
