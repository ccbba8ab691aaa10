"""Pure aggregation: tiles -> image prediction -> well readout at a time point."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nscmonitor.core.calibration import WellCalibration


@dataclass(frozen=True)
class ImageScore:
    prob_mean: np.ndarray  # K
    prob_sd: np.ndarray  # K, across tiles
    fraction: np.ndarray  # K, share of tiles whose top class is k
    n_tiles: int
    confidence: float  # mean over tiles of the top probability


def image_score(tile_probs: np.ndarray) -> ImageScore:
    k = tile_probs.shape[1]
    if len(tile_probs) == 0:
        nan = np.full(k, np.nan)
        return ImageScore(nan, nan, np.zeros(k), 0, float("nan"))
    top = tile_probs.argmax(axis=1)
    return ImageScore(
        prob_mean=tile_probs.mean(axis=0), prob_sd=tile_probs.std(axis=0),
        fraction=np.bincount(top, minlength=k) / len(top), n_tiles=len(top),
        confidence=float(tile_probs.max(axis=1).mean()),
    )


@dataclass(frozen=True)
class WellAggregate:
    prob_mean: list[float]
    prob_sd: list[float]
    fraction: list[float]
    n_images: int
    n_tiles: int
    n_qc_failed: int
    confidence: float


def well_aggregate(images: list[tuple[ImageScore | None, bool]], k: int,
                   calibration: WellCalibration | None = None) -> WellAggregate:
    """``images``: (score or None when unscored, QC passed) for every image of the well at
    one time point. Probabilities: mean and sd across fields (the band the dashboard
    draws); fractions: pooled over all tiles, so a field with more cells weighs more.
    With the model's well ``calibration`` the mean is calibrated and the sd is that of the
    fields' calibrated means, so the band stays around the line it is drawn with."""
    used = [s for s, ok in images if ok and s is not None and s.n_tiles > 0]
    n_failed = sum(1 for _, ok in images if not ok)
    if not used:
        return WellAggregate([], [], [], 0, 0, n_failed, float("nan"))
    means = np.stack([s.prob_mean for s in used])
    n_tiles = np.array([s.n_tiles for s in used], dtype=np.float64)
    frac = (np.stack([s.fraction for s in used]) * n_tiles[:, None]).sum(axis=0) / n_tiles.sum()
    mean = means.mean(axis=0)
    if calibration is not None:
        mean, means = calibration.apply(mean), calibration.apply(means)
    return WellAggregate(
        prob_mean=[float(v) for v in mean],
        prob_sd=[float(v) for v in (means.std(axis=0, ddof=1) if len(used) > 1 else np.zeros(k))],
        fraction=[float(v) for v in frac],
        n_images=len(used), n_tiles=int(n_tiles.sum()), n_qc_failed=n_failed,
        confidence=float(np.mean([s.confidence for s in used])),
    )


def pack_tiles(tile_probs: np.ndarray, rows: int, cols: int, kept: np.ndarray) -> bytes:
    """Per-tile probabilities for the dashboard's overlay: rows, cols, K, kept mask, fp16."""
    header = np.array([rows, cols, tile_probs.shape[1] if tile_probs.ndim == 2 else 0], dtype=np.int32)
    return header.tobytes() + np.packbits(kept.astype(bool)).tobytes() + tile_probs.astype(np.float16).tobytes()


def unpack_tiles(blob: bytes) -> tuple[int, int, np.ndarray, np.ndarray]:
    rows, cols, k = (int(v) for v in np.frombuffer(blob[:12], dtype=np.int32))
    nbits = (rows * cols + 7) // 8
    kept = np.unpackbits(np.frombuffer(blob[12:12 + nbits], dtype=np.uint8))[: rows * cols].astype(bool)
    probs = np.frombuffer(blob[12 + nbits:], dtype=np.float16).astype(np.float32).reshape(-1, k) if k else np.zeros((0, 0))
    return rows, cols, kept, probs
