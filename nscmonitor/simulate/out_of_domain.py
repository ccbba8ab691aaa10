"""Images a phase-contrast NSC model never saw, of other kinds than noise, to measure its
out-of-distribution flag (docs/training.md "Out-of-distribution flag").

Each kind returns raw camera-count images (uint16, like the instrument's) so they go through
the daemon's own preprocessing (per-image percentile scaling) exactly as a real file would:
- ``brightfield``: the simulator's bright-field optics instead of phase contrast, same cultures;
- ``magnification``: phase contrast at 2.48 um/px (a 5x objective) instead of 1.24 (10x);
- ``20x``: phase contrast at 0.62 um/px (a 20x objective): cells twice their size in pixels;
- ``inverted``: in-domain images with their intensities reversed;
- ``blank``: empty fields (flat illumination, vignetting, shot and read noise);
- ``texture``: natural-texture-like procedural patterns (fractal 1/f clouds, wood-like
  grain, cobblestone cells of a Voronoi tessellation).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

KINDS = ("brightfield", "magnification", "20x", "inverted", "blank", "texture")
FULL_SCALE = 4095.0
#: the ``magnification`` kind's pixel size: a 5x objective on the camera that gives 1.24 um/px at 10x
MAGNIFICATION_PIXEL_SIZE_UM = 2.48
#: the ``20x`` kind's pixel size
HIGH_MAGNIFICATION_PIXEL_SIZE_UM = 0.62


def _counts(img: np.ndarray, rng: np.random.Generator, level: float = 1800.0, span: float = 600.0) -> np.ndarray:
    """[0, 1] pattern -> 12-bit counts with shot and read noise."""
    mean = level + span * (img - 0.5)
    noisy = rng.poisson(np.clip(mean, 1, None)) + rng.normal(0, 3.0, img.shape)
    return np.clip(noisy, 0, FULL_SCALE).astype(np.uint16)


def _fractal(rng: np.random.Generator, size: int, beta: float) -> np.ndarray:
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    f = np.hypot(fy, fx)
    f[0, 0] = 1.0
    spectrum = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))) / f ** (beta / 2)
    img = np.real(np.fft.ifft2(spectrum))
    return (img - img.min()) / (np.ptp(img) + 1e-12)


def _grain(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    angle = rng.uniform(0, np.pi)
    warp = 6.0 * _fractal(rng, size, 3.0)
    u = xx * np.cos(angle) + yy * np.sin(angle) + warp * rng.uniform(2, 6)
    return 0.5 + 0.5 * np.sin(2 * np.pi * u / rng.uniform(3, 9))


def _cobblestone(rng: np.random.Generator, size: int) -> np.ndarray:
    n = int(rng.integers(6, 30))
    seeds = rng.uniform(0, size, (n, 2))
    yy, xx = np.mgrid[:size, :size]
    d = np.sort(np.hypot(yy[..., None] - seeds[:, 0], xx[..., None] - seeds[:, 1]), axis=-1)
    edge = d[..., 1] - d[..., 0]
    return np.clip(edge / (edge.max() + 1e-12), 0, 1) ** 0.5


def textures(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    makers = (lambda: _fractal(rng, size, rng.uniform(1.5, 3.0)), lambda: _grain(rng, size),
              lambda: _cobblestone(rng, size))
    return [_counts(makers[i % 3](), rng) for i in range(n)]


def blanks(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / max(size - 1, 1) - 0.5
    out = []
    for _ in range(n):
        cy, cx = rng.uniform(-0.5, 0.5, 2)
        vignette = 1.0 - rng.uniform(0.0, 0.3) * ((yy - cy) ** 2 + (xx - cx) ** 2)
        out.append(_counts(vignette * rng.uniform(0.6, 1.0), rng, level=rng.uniform(800, 2500), span=400.0))
    return out


def inverted(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [(int(img.max()) + int(img.min()) - img.astype(np.int64)).astype(img.dtype) for img in images]


def field_cuts(paths: Sequence[str | Path]) -> list[list[np.ndarray]]:
    """The labelled-tiles export's cuts (``.../WELL/fF_tHHHh_YX.tif``) grouped by the field
    they were cut from (a cut without a live cell was never written), in path order."""
    import tifffile

    cuts: dict[tuple[str, str], list[Path]] = {}
    for p in map(Path, paths):
        cuts.setdefault((str(p.parent), p.stem.rpartition("_")[0]), []).append(p)
    return [[tifffile.imread(p) for p in parts] for _, parts in sorted(cuts.items())]


def cut(images: Sequence[np.ndarray], size: int) -> list[list[np.ndarray]]:
    """Whole images -> their grid of ``size`` cuts, per image."""
    return [[img[y:y + size, x:x + size] for y in range(0, img.shape[0] - size + 1, size)
             for x in range(0, img.shape[1] - size + 1, size)] for img in images]


def rendered_fields(kind: str, n: int, tile_size: int, seed: int = 0) -> list[list[np.ndarray]]:
    """Up to ``n`` fields (their cuts of ``tile_size``) of the simulator's cultures under another
    optic (``brightfield``) or pixel size (``magnification``: 2.48 um/px, a 5x objective;
    ``20x``: 0.62 um/px)."""
    from nscmonitor.simulate.labelled_tiles import TILE_CONDITIONS, export_tiles

    kw = ({"modality": "brightfield"} if kind == "brightfield" else
          {"pixel_size_um": HIGH_MAGNIFICATION_PIXEL_SIZE_UM if kind == "20x" else MAGNIFICATION_PIXEL_SIZE_UM})
    hours = (24, 96)
    per_plate = 2 * len(hours) * len(TILE_CONDITIONS)  # two wells per condition
    with tempfile.TemporaryDirectory(prefix="nscm-ood-") as tmp:
        export_tiles(tmp, plates=max(1, -(-n // per_plate)), hours=hours, tile_size=tile_size, wells_per_condition=2,
                     grid=(3, 3), seed=seed, **kw)
        return field_cuts(sorted(Path(tmp, "tiles").rglob("*.tif")))[:n]


def images(kind: str, n: int, tile_size: int, *, in_domain: Sequence[Sequence[np.ndarray]] = (),
           seed: int = 0) -> list[list[np.ndarray]]:
    """``n`` raw images of one of ``KINDS``, each as its cuts of ``tile_size`` (3 x 3 for the
    generated kinds); ``inverted`` reverses the cuts of ``in_domain`` images."""
    if kind in ("brightfield", "magnification", "20x"):
        return rendered_fields(kind, n, tile_size, seed)
    if kind == "inverted":
        return [inverted(cuts) for cuts in list(in_domain)[:n]]
    if kind == "blank":
        return cut(blanks(n, 3 * tile_size, seed), tile_size)
    if kind == "texture":
        return cut(textures(n, 3 * tile_size, seed), tile_size)
    raise ValueError(f"unknown out-of-domain kind {kind!r}; choose from {', '.join(KINDS)}")
