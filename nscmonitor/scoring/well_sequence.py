"""A well's frames as the time-aware well model reads them: texture features per frame,
normalised against what the well's own plate offers at induction, with the hours since
induction beside them.

One module for training (``nscmonitor.training.temporal``) and the daemon's second stage
(``nscmonitor.scoring.forecast``), so the two can never normalise differently.

Why the plate's induction frames (docs/training.md, "Plate-aware early reading"): plate-to-plate
variation (optics, density, timing) hides the early fate cues far more than the lack of
signal does. Every plate of a time-lapse has a scan at induction (0 h), where by construction
(and in biology) no well shows its fate yet; its wells give the plate's own reference for
every feature (mean and spread over wells), and each well's own 0 h frame gives its starting
point. Both exist on every plate, unlike control wells (a dose or mixture plate may have
none), and both are known before any later frame is read, unlike a same-hour normalisation
over the plate's wells, which needs the whole scan and depends on what the plate holds (a
plate of neuronal doses would be normalised towards "average").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nscmonitor.registry.forecasts import METADATA_KEY

#: the ONNX metadata key of a well forecast model (beside the tile model's ``nscmonitor``)
FORECAST_KEY = METADATA_KEY
#: the feature set the forecast model reads of a frame (the model's metadata ``features``)
EXTRACTOR = "texture-15+blobs-12"
MODEL_FEATURES = 27
#: what the daemon measures and stores per frame: the model's features, then the optics
#: features that only the forecast's out-of-distribution score reads (``optics_features``)
STORED = EXTRACTOR + "+optics-2"
STORED_FEATURES = MODEL_FEATURES + 2
#: feature sets a stored row may carry (rows stored before the optics features hold the model's 27)
STORED_SETS = (STORED, EXTRACTOR)
#: frames at or before this many hours after induction are the induction (reference) scan
BASELINE_MAX_H = 1.0
#: hours are scaled by this before they enter the model
HOURS_SCALE = 120.0
#: normalisations: "none" (raw features), "plate0" (z-score against the plate's induction scan),
#: "plate0+well0" (that, and the well's change since its own induction frame)
NORMALISATIONS = ("none", "plate0", "plate0+well0")
_MIN_SD = 1e-6


#: smoothing scales (px) and thresholds (relative to the tile's median) of the blob counts
BLOB_SIGMAS = (1.5, 3.0)
BLOB_LEVELS = (0.05, 0.1, 0.2)


def blob_features(tile: np.ndarray) -> np.ndarray:
    """Targeted early cues per 10,000 px: phase-bright compact objects (rounded somata of
    committing neurons, mitotic and dead cells) and dark cell bodies (density), counted as
    local extrema of the smoothed, median-divided tile above a few levels, at two scales."""
    from scipy import ndimage

    x = tile.astype(np.float32)
    x = x / max(float(np.median(x)), 1.0) - 1.0
    per = 1e4 / x.size
    out = []
    for sigma in BLOB_SIGMAS:
        s = ndimage.gaussian_filter(x, sigma)
        size = 2 * int(round(2 * sigma)) + 1
        peaks = s == ndimage.maximum_filter(s, size)
        pits = s == ndimage.minimum_filter(s, size)
        out += [float((peaks & (s > level)).sum()) * per for level in BLOB_LEVELS]
        out += [float((pits & (s < -level)).sum()) * per for level in BLOB_LEVELS]
    return np.asarray(out, np.float64)


def optics_features(tile: np.ndarray) -> np.ndarray:
    """How the tile's intensities spread about its background: the bright tail's reach over the
    dark tail's (99th and 1st percentiles about the median) and the skewness. Phase contrast
    gives dark cell bodies ringed by bright halos, and phase-bright somata; bright field
    (defocus rims of both signs, nearly invisible cells) and an inverted or foreign image
    spread otherwise. The texture and blob features barely see that difference (the forecast's
    out-of-distribution score flagged 60-73 % of bright-field frames on them, 100 % with these
    two added: docs/training.md), and the forecast does not read them: they only serve its
    out-of-distribution score. One partition gives the three percentiles and float32 dot
    products the moments: a tenth of the time ``np.quantile`` and float64 powers took, which
    had added 40 % to a frame's feature time."""
    v = np.asarray(tile).ravel()
    pos = np.array(_OPTICS_QUANTILES) * (v.size - 1)  # np.quantile's linear interpolation, from one partition
    below, above = np.floor(pos).astype(int), np.ceil(pos).astype(int)
    part = np.partition(v, np.unique(np.concatenate([below, above]))).astype(np.float64)
    q = part[below] + (pos - below) * (part[above] - part[below])
    scale = max(float(q[1]), 1.0)
    lo, mid, hi = q / scale - 1.0
    d = v.astype(np.float32) / np.float32(scale)
    d = d - np.float32(d.mean(dtype=np.float64))
    m2, m3 = float(np.dot(d, d)) / d.size, float(np.dot(d * d, d)) / d.size
    skew = m3 / m2 ** 1.5 if m2 > 1e-18 else 0.0
    return np.asarray([(hi - mid) / max(mid - lo, 1e-6), skew], np.float64)


#: the optics features' percentiles: the dark tail, the median (background), the bright tail
_OPTICS_QUANTILES = (0.01, 0.5, 0.99)


def tile_vector(tile: np.ndarray) -> np.ndarray:
    """What is measured of one tile: 15 texture features and 12 blob counts (what the well
    model reads), then the 2 optics features (what its out-of-distribution score adds)."""
    from nscmonitor.core.texture import tile_features

    return np.concatenate([tile_features(tile), blob_features(tile), optics_features(tile)])


def model_part(features: np.ndarray) -> np.ndarray:
    """The features the well model reads of a stored vector (a row stored before the optics
    features were measured is all model features)."""
    return np.asarray(features, np.float64)[..., :MODEL_FEATURES]


def frame_features(pixels: np.ndarray, tile_px: int) -> np.ndarray:
    """Mean texture features over the non-overlapping ``tile_px`` tiles of one frame (a
    centred grid; a frame smaller than a tile is one tile), as the training export cuts
    fields into tiles."""
    img = np.asarray(pixels)
    h, w = img.shape[:2]
    rows, cols = max(1, h // tile_px), max(1, w // tile_px)
    th, tw = min(tile_px, h), min(tile_px, w)
    y0, x0 = (h - rows * th) // 2, (w - cols * tw) // 2
    feats = [tile_vector(img[y0 + r * th:y0 + (r + 1) * th, x0 + c * tw:x0 + (c + 1) * tw])
             for r in range(rows) for c in range(cols)]
    return np.mean(feats, axis=0)


@dataclass(frozen=True)
class PlateReference:
    """The plate's induction scan: per-feature mean and spread over its wells."""

    mean: np.ndarray
    sd: np.ndarray
    n_wells: int


def plate_reference(induction_features: Sequence[np.ndarray]) -> PlateReference:
    """From the induction-scan features of the plate's wells (one vector per well). One well
    gives no spread: the features are then only centred (sd 1)."""
    x = np.asarray(induction_features, np.float64)
    if x.ndim != 2 or not len(x):
        raise ValueError("a plate reference needs at least one well's induction features")
    sd = x.std(axis=0) if len(x) > 1 else np.ones(x.shape[1])
    return PlateReference(mean=x.mean(axis=0), sd=np.maximum(sd, _MIN_SD), n_wells=len(x))


def is_induction(hours: float | None) -> bool:
    return hours is not None and hours <= BASELINE_MAX_H


def normalise(features: np.ndarray, plate: PlateReference | None, well0: np.ndarray | None,
              normalisation: str) -> np.ndarray:
    """One frame's model features (``model_part`` of the measured vectors) under
    ``normalisation`` (see NORMALISATIONS). Without the references it needs (no induction scan
    stored yet) it raises ``ValueError``: a forecast made on another basis than training's
    would mean nothing."""
    f = model_part(features)
    if normalisation == "none":
        return f
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {normalisation!r} (one of {', '.join(NORMALISATIONS)})")
    if plate is None:
        raise ValueError("no induction scan of this plate: the plate-normalised forecast needs one")
    mean, sd = model_part(plate.mean), model_part(plate.sd)
    z = (f - mean) / sd
    if normalisation == "plate0":
        return z
    if well0 is None:
        raise ValueError("no induction frame of this well: the forecast needs one")
    return np.concatenate([z, (f - model_part(well0)) / sd])


def feature_width(n_features: int, normalisation: str) -> int:
    """Inputs per time step: the normalised features and the scaled hours."""
    return n_features * (2 if normalisation == "plate0+well0" else 1) + 1


def sequence(frames: Sequence[tuple[float, np.ndarray]], plate: PlateReference | None, well0: np.ndarray | None,
             normalisation: str, *, up_to_h: float | None = None) -> np.ndarray:
    """T x D model input of one well: its frames (hours, features) in time order, those after
    ``up_to_h`` left out, each normalised and followed by its scaled hours since induction."""
    kept = sorted((h, f) for h, f in frames if up_to_h is None or h <= up_to_h)
    if not kept:
        raise ValueError("a well sequence needs at least one frame")
    return np.stack([np.append(normalise(f, plate, well0, normalisation), h / HOURS_SCALE)
                     for h, f in kept]).astype(np.float32)
