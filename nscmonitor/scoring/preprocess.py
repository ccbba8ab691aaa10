"""The one input contract: a raw image -> the model's tiles, built from the model's metadata.

Everything that feeds a model goes through ``Preprocess``: the daemon's runner, training's
data loader, int8 calibration and every gate, ``explain`` and the benchmarks. A model trained
on other pixels than it is served on reads differently, and an int8 engine calibrated or
certified on pixels the daemon never produces certifies nothing; one implementation makes both
impossible. The steps, in order:

1. percentiles ``p_low``/``p_high`` of the whole image handed in (per image, never per tile,
   never the dtype maximum: 12-bit data in 16-bit files would use a sixteenth of the range);
   integer images use a histogram, about 2.5x faster than ``np.percentile`` on a 2048² frame;
2. scale ``[lo, hi] -> [0, 1]`` and clip to ``[-0.5, 1.5]`` so outliers cannot dominate a tile;
3. resample by ``factor`` (source pixel size / model pixel size): average ``k x k`` blocks
   when shrinking two-fold or more (linear sampling alone aliases fine texture into false
   neurite-like structure), then linear interpolation for the rest; factors within 2 % of 1
   are not resampled;
4. tile grid: non-overlapping tiles of the model's input size on a grid centred in the
   resampled frame; a frame smaller than one tile is padded by reflection;
5. tile order: row-major over the grid;
6. empty-tile rule: tiles whose scaled intensity has a standard deviation below 0.01 are not
   scored (background, a blank corner);
7. model layout: ``N x C x S x S`` float32, grey replicated to ``C`` channels, and
   ``(x - mean) / std`` unless the graph does that itself (``in_graph``).

Numpy and scipy only: the core never imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

CLIP = (-0.5, 1.5)
MIN_TILE_STD = 0.01
RESAMPLE_TOLERANCE = 0.02


def percentiles(img: np.ndarray, qs: tuple[float, ...]) -> tuple[float, ...]:
    if img.dtype in (np.uint8, np.uint16):
        hist = np.bincount(img.ravel(), minlength=256 if img.dtype == np.uint8 else 0)
        cdf = np.cumsum(hist)
        total = cdf[-1]
        return tuple(float(np.searchsorted(cdf, q / 100.0 * total, side="left")) for q in qs)
    return tuple(float(v) for v in np.percentile(img, qs))


def scale(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    span = hi - lo if hi > lo else 1.0
    out = (img.astype(np.float32) - np.float32(lo)) * np.float32(1.0 / span)
    np.clip(out, *CLIP, out=out)
    return out


def block_mean(img: np.ndarray, k: int) -> np.ndarray:
    """Shrink the last two axes k-fold by averaging k x k blocks (remainder dropped).
    Summed as k strided row slices, then k column slices: numpy's mean over the two axes
    of a reshaped view took 10 ms of a 1408 x 1040 frame's 2x shrink, these sums 1.3 ms
    (the daemon does this for every frame; the sums agree to float32 rounding)."""
    h, w = img.shape[-2] // k * k, img.shape[-1] // k * k
    lead = img.shape[:-2]
    v = img[..., :h, :w]
    rows = np.zeros((*lead, h // k, w), np.float32)
    for i in range(k):
        rows += v[..., i::k, :]
    out = np.zeros((*lead, h // k, w // k), np.float32)
    for j in range(k):
        out += rows[..., j::k]
    out *= np.float32(1.0 / (k * k))
    return out


def resample(img: np.ndarray, factor: float) -> np.ndarray:
    """Zoom a 2-D image by ``factor`` (< 1 shrinks). The block size is rounded with a small
    tolerance so that an exact 2x or 3x shrink (1 / factor computed as 1.9999999) averages
    blocks instead of sampling every other pixel."""
    if abs(factor - 1.0) < RESAMPLE_TOLERANCE:
        return img
    k = int(1.0 / factor + 1e-6) if factor < 1.0 else 1
    if k > 1:
        img = block_mean(img, k)
        factor *= k
    return ndimage.zoom(img, factor, order=1, prefilter=False)


def tile_px_at(tile_px: int, ref_um: float | None, image_um: float | None) -> int:
    """A tile of ``tile_px`` pixels of ``ref_um`` in pixels of ``image_um``: the same physical
    field where both pixel sizes are known, else ``tile_px`` as it is. Training and the
    daemon's feature stage cut their tiles by this one rule."""
    if ref_um and image_um:
        return max(8, int(round(tile_px * float(ref_um) / float(image_um))))
    return int(tile_px)


@dataclass(frozen=True)
class TileGrid:
    tiles: np.ndarray  # N x C x S x S float32, kept tiles only, row-major
    rows: int
    cols: int
    origin: tuple[int, int]  # top-left pixel of the grid in the resampled frame (grid is centred)
    size: int
    kept: np.ndarray  # bool rows*cols, row-major: which grid cells were scored


def grid(img: np.ndarray, size: int, *, min_std: float = MIN_TILE_STD) -> TileGrid:
    """Steps 4-6 on a scaled, resampled 2-D image; tiles come back as N x 1 x S x S."""
    h, w = img.shape
    rows, cols = h // size, w // size
    if rows == 0 or cols == 0:
        pad_h, pad_w = max(0, size - h), max(0, size - w)
        img = np.pad(img, ((0, pad_h), (0, pad_w)), mode="reflect" if min(h, w) > 1 else "edge")
        h, w = img.shape
        rows, cols = h // size, w // size
    y0, x0 = (h - rows * size) // 2, (w - cols * size) // 2
    view = img[y0:y0 + rows * size, x0:x0 + cols * size]
    blocks = view.reshape(rows, size, cols, size).transpose(0, 2, 1, 3).reshape(rows * cols, size, size)
    std = blocks.reshape(len(blocks), -1).std(axis=1)
    kept = std >= min_std
    tiles = np.ascontiguousarray(blocks[kept][:, None, :, :], dtype=np.float32)
    return TileGrid(tiles, rows, cols, (y0, x0), size, kept)


@dataclass(frozen=True)
class Preprocess:
    """The input contract of one model. Build it with ``from_metadata`` so that nobody
    re-types a percentile or a tile size."""

    input_size: int
    p_low: float = 1.0
    p_high: float = 99.8
    pixel_size_um: float | None = None
    channels: int = 1
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    in_graph: bool = True
    min_std: float = MIN_TILE_STD

    @classmethod
    def from_metadata(cls, meta: Any) -> "Preprocess":
        """From an ``engines.metadata.ModelMetadata`` or a training run's metadata dict
        (checkpoint/config: ``image_size``, ``pixel_size_um``, ``normalization``)."""
        if isinstance(meta, Mapping):
            size = meta.get("input_size") or meta["image_size"]
            norm = meta.get("normalization") or {}
            px, ch = meta.get("pixel_size_um"), meta.get("input_channels", 1)
        else:
            size, norm, px, ch = meta.input_size, meta.normalization, meta.pixel_size_um, meta.input_channels
        return cls(input_size=int(size), p_low=float(norm.get("p_low", 1.0)), p_high=float(norm.get("p_high", 99.8)),
                   pixel_size_um=px, channels=int(ch), mean=_floats(norm.get("mean", 0.0)),
                   std=_floats(norm.get("std", 1.0)), in_graph=bool(norm.get("in_graph", True)))

    def factor(self, src_um: float | None = None, *, tile_px: int | None = None) -> float:
        """Resampling factor for an image: from its pixel size when both sides know theirs;
        else from how many source pixels one tile spans (``tile_px``, training's tile size);
        else 1 (the image is served at its own scale)."""
        if src_um and self.pixel_size_um:
            return float(src_um) / float(self.pixel_size_um)
        if tile_px:
            return self.input_size / float(tile_px)
        return 1.0

    def lohi(self, img: np.ndarray) -> tuple[float, float]:
        lo, hi = percentiles(img, (self.p_low, self.p_high))
        return lo, hi

    def scaled(self, img: np.ndarray, *, factor: float = 1.0,
               lohi: tuple[float, float] | None = None) -> np.ndarray:
        """Steps 1-3: the scaled, resampled 2-D image (what explain overlays)."""
        lo, hi = lohi if lohi is not None else self.lohi(img)
        return resample(scale(img, lo, hi), factor)

    def tiles(self, img: np.ndarray, *, factor: float = 1.0,
              lohi: tuple[float, float] | None = None) -> TileGrid:
        """Steps 1-7 on one 2-D image; ``lohi`` passes percentiles already computed (the
        daemon's QC computes them once per frame)."""
        if img.ndim != 2:
            raise ValueError(f"expected a 2-D image, got shape {img.shape}")
        g = grid(self.scaled(img, factor=factor, lohi=lohi), self.input_size, min_std=self.min_std)
        return TileGrid(self.model_layout(g.tiles), g.rows, g.cols, g.origin, g.size, g.kept)

    def model_layout(self, tiles: np.ndarray) -> np.ndarray:
        """N x 1 x S x S scaled tiles -> what the graph takes (step 7)."""
        x = tiles
        if self.channels != x.shape[1]:
            x = np.repeat(x, self.channels, axis=1)
        if not self.in_graph and (any(m != 0.0 for m in self.mean) or any(s != 1.0 for s in self.std)):
            mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
            std = np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
            x = (x - mean) / std
        return np.ascontiguousarray(x, dtype=np.float32)


def _floats(v: Any) -> tuple[float, ...]:
    """Mean/std are one number for grey models or one per channel."""
    return tuple(float(x) for x in np.atleast_1d(np.asarray(v, dtype=np.float64)))
