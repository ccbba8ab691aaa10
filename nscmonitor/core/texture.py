"""Texture features of one tile: what the classical baseline fits and what the time-aware
well model reads of each frame. On the ground floor because the daemon (scoring's well
model), training and the simulator's baseline all compute the same numbers.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def tile_features(tile: np.ndarray) -> np.ndarray:
    """Illumination-invariant texture features: the tile is divided by its median first,
    so gain, vignetting and bit depth do not leak into the class."""
    x = tile.astype(np.float32)
    x = x / max(float(np.median(x)), 1.0) - 1.0
    q = np.percentile(x, [1, 5, 25, 75, 95, 99])
    gy, gx = np.gradient(x)
    grad = np.hypot(gx, gy)
    feats = [x.std(), *q, grad.mean(), grad.std(), (x > 0.08).mean(), (x < -0.08).mean()]
    for s in (1.0, 2.5, 5.0):
        feats.append(np.abs(ndimage.gaussian_laplace(x, s)).mean())
    # Thin lines (neurites, OL webs): fraction of pixels darker than a 2 px neighbourhood mean.
    local = ndimage.uniform_filter(x, 5)
    feats.append(((local - x) > 0.04).mean())
    return np.asarray(feats, dtype=np.float64)
