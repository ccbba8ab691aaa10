"""Labelled tiles on disk -> arrays in the model's input contract.

Int8 calibration and every validation gate must see tiles exactly as the daemon feeds them,
otherwise the quantization ranges (and the agreement we certify) belong to a different input
distribution. The folder format is the simulator's / training set's: ``DIR/tiles.csv`` with at
least ``path`` and ``split`` columns (paths relative to DIR, 2-D TIFF raw intensities), and
optionally ``label``, ``plate``, ``well``; ``DIR/tiles.json`` describes the set and is not needed
here.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nscmonitor.engines.base import EngineError
from nscmonitor.engines.metadata import ModelMetadata

CLIP = (-0.5, 1.5)
HELD_OUT_SPLITS = ("val", "valid", "validation", "test", "holdout", "heldout")


@dataclass(frozen=True)
class TileSet:
    """Tiles ready for ``Engine.infer`` and, per tile, the well it came from so gates can
    compare well-level readouts (the number the scientist actually sees)."""

    x: np.ndarray
    groups: tuple[str, ...]
    labels: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.x)


def scale_image(img: np.ndarray, p_low: float, p_high: float) -> np.ndarray:
    """Per-image percentile scaling of the input contract (metadata.py); never divide by the
    dtype maximum, because 12-bit data in 16-bit files would then sit near zero."""
    img = np.asarray(img, np.float32)
    lo, hi = np.percentile(img, [p_low, p_high])
    span = float(hi - lo) if hi > lo else 1.0
    return np.clip((img - lo) / span, *CLIP).astype(np.float32)


def fit_size(img: np.ndarray, size: int) -> np.ndarray:
    """Resample a tile to the model's input size the way training does (bilinear, averaging
    blocks first when shrinking two-fold or more), so calibration sees training's pixels."""
    h, w = img.shape
    if (h, w) == (size, size):
        return img
    from scipy.ndimage import zoom

    k = min(h, w) // size
    if k >= 2:
        img = img[:h // k * k, :w // k * k].reshape(h // k, k, w // k, k).mean(axis=(1, 3))
        h, w = img.shape
    return zoom(img, (size / h, size / w), order=1)[:size, :size].astype(np.float32)


def to_input(img: np.ndarray, meta: ModelMetadata) -> np.ndarray:
    """One raw 2-D image -> ``C x S x S`` float32 in the model's input contract."""
    if img.ndim != 2:
        raise EngineError(f"calibration tiles must be 2-D images, got shape {img.shape}")
    norm = meta.normalization
    tile = fit_size(scale_image(img, norm["p_low"], norm["p_high"]), meta.input_size)
    chans = np.repeat(tile[None], meta.input_channels, axis=0)
    if not norm.get("in_graph", False):
        mean = np.asarray(norm.get("mean", 0.0), np.float32).reshape(-1, 1, 1)
        std = np.asarray(norm.get("std", 1.0), np.float32).reshape(-1, 1, 1)
        chans = (chans - mean) / std
    return np.ascontiguousarray(chans, np.float32)


def _read_rows(folder: Path) -> list[dict[str, str]]:
    table = folder / "tiles.csv"
    if not table.is_file():
        raise EngineError(f"{folder} has no tiles.csv (expected columns path,...,split)")
    with table.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "path" not in rows[0] or "split" not in rows[0]:
        raise EngineError(f"{table} needs at least the columns 'path' and 'split'")
    return rows


def load_tiles(folder: str | Path, meta: ModelMetadata, *, splits: tuple[str, ...] | None = None,
               limit: int | None = None, seed: int = 0) -> TileSet:
    """Load tiles of the given splits (all when None), a seeded random subset if ``limit``.

    The subset is stratified by nothing on purpose: calibration wants the data's own class
    mix, and a fixed seed makes a rebuilt int8 model reproducible.
    """
    import tifffile

    folder = Path(folder)
    rows = _read_rows(folder)
    if splits is not None:
        wanted = {s.lower() for s in splits}
        rows = [r for r in rows if r["split"].strip().lower() in wanted]
    if not rows:
        raise EngineError(f"{folder}/tiles.csv has no tiles in splits {splits}")
    if limit is not None and len(rows) > limit:
        pick = np.random.default_rng(seed).choice(len(rows), size=limit, replace=False)
        rows = [rows[i] for i in sorted(pick)]
    xs, groups, labels = [], [], []
    for r in rows:
        path = folder / r["path"]
        try:
            img = tifffile.imread(path)
        except (OSError, ValueError) as exc:
            raise EngineError(f"cannot read calibration tile {path}: {exc}") from exc
        xs.append(to_input(np.squeeze(img), meta))
        well = r.get("well") or ""
        groups.append(f"{r.get('plate') or ''}/{well}" if well else "all")
        labels.append(r.get("label") or "")
    return TileSet(np.stack(xs), tuple(groups), tuple(labels), str(folder))


def calibration_and_heldout(folder: str | Path, meta: ModelMetadata, *, n_calib: int = 128,
                            n_heldout: int = 512, seed: int = 0) -> tuple[TileSet, TileSet]:
    """Calibrate on training tiles, certify on held-out ones: checking agreement on the tiles
    that set the quantization ranges would flatter the int8 model."""
    calib = load_tiles(folder, meta, splits=("train",), limit=n_calib, seed=seed)
    held = load_tiles(folder, meta, splits=HELD_OUT_SPLITS, limit=n_heldout, seed=seed + 1)
    return calib, held
