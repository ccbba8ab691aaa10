"""Image statistics that say whether a frame looks like real phase contrast.

Pure functions of one 2-D frame (camera counts), used by the optics test and by the table in
docs/simulator.md, so the figures compared with real Incucyte frames are computed one way:

* ``contrast``: std of the frame after background flattening (``frame / background - 1``);
* ``p1``, ``p99``: its 1st and 99th percentiles, i.e. relative to the background;
* ``halo``: ``p99 / -p1``, how bright the brightest structures (halos, phase-bright somata)
  are against how dark the darkest (cell bodies); about 1 in real frames;
* ``fine_share``: share of the flattened frame's power (DC excluded, Hann window) at radial
  frequencies 0.2-0.5 cycles/px, the fine texture;
* ``slow_illumination``: relative std of a quadratic surface fitted to the background, the
  large-scale illumination left after the instrument's flat-field correction.

The background is the median of 32 x 32 px blocks, smoothed and interpolated back: cells
cover a minority of most blocks, so the median is the medium's level (for a confluent carpet,
the carpet's, which is what a flattening by eye or by software would take too).

REAL_RANGES are the figures measured on real Incucyte phase-contrast frames of a neuronal
line (flattened the same way); SIMULATOR_BEFORE are the same statistics of the simulator
before its optics were rebuilt, for the record.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

BLOCK = 32
FINE_BAND = (0.2, 0.5)

# (low, high) per statistic; fractions, not percent. Halo from the percentile ranges:
# 0.20 / 0.27 to 0.30 / 0.21. Slow illumination: real frames show ~0.0004 (flattened by the
# instrument); the bound is five times that.
REAL_RANGES: dict[str, tuple[float, float]] = {
    "contrast": (0.06, 0.10),
    "p1": (-0.27, -0.21),
    "p99": (0.20, 0.30),
    "halo": (0.74, 1.43),
    "fine_share": (0.53, 0.68),
    "slow_illumination": (0.0, 0.002),
}
SIMULATOR_BEFORE: dict[str, tuple[float, float]] = {
    "contrast": (0.023, 0.042), "p1": (-0.18, -0.10), "p99": (0.04, 0.10), "fine_share": (0.09, 0.30),
    "slow_illumination": (0.033, 0.033),
}


def background(frame: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(full-size background, block-median map)."""
    x = np.asarray(frame, dtype=np.float64)
    h, w = x.shape
    bh, bw = max(1, h // block), max(1, w // block)
    cut = x[: bh * block, : bw * block].reshape(bh, block, bw, block)
    med = np.median(cut.transpose(0, 2, 1, 3).reshape(bh, bw, -1), axis=2)
    smooth = ndimage.gaussian_filter(med, 1.0, mode="nearest")
    full = ndimage.zoom(smooth, (h / bh, w / bw), order=1, mode="nearest", grid_mode=True)
    return full[:h, :w], med


def flattened(frame: np.ndarray) -> np.ndarray:
    bg, _ = background(frame)
    return np.asarray(frame, dtype=np.float64) / np.maximum(bg, 1e-6) - 1.0


def fine_share(flat: np.ndarray, band: tuple[float, float] = FINE_BAND) -> float:
    h, w = flat.shape
    win = np.hanning(h)[:, None] * np.hanning(w)[None, :]
    power = np.abs(np.fft.rfft2((flat - flat.mean()) * win)) ** 2
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    r = np.hypot(fy, fx)
    total = power[r > 0].sum()
    return float(power[(r >= band[0]) & (r <= band[1])].sum() / total) if total > 0 else 0.0


def slow_illumination(block_medians: np.ndarray) -> float:
    """Relative std of the least-squares quadratic surface through the block medians."""
    bh, bw = block_medians.shape
    y, x = np.mgrid[0:bh, 0:bw]
    y, x = y.ravel() / max(bh - 1, 1) - 0.5, x.ravel() / max(bw - 1, 1) - 0.5
    a = np.column_stack([np.ones_like(x), x, y, x * x, y * y, x * y])
    coef, *_ = np.linalg.lstsq(a, block_medians.ravel(), rcond=None)
    fit = a @ coef
    return float(fit.std() / max(abs(fit.mean()), 1e-9))


def frame_stats(frame: np.ndarray) -> dict[str, float]:
    bg, med = background(frame)
    flat = np.asarray(frame, dtype=np.float64) / np.maximum(bg, 1e-6) - 1.0
    p1, p99 = np.percentile(flat, [1, 99])
    return {
        "contrast": float(flat.std()), "p1": float(p1), "p99": float(p99),
        "halo": float(p99 / -p1) if p1 < 0 else float("inf"),
        "fine_share": fine_share(flat), "slow_illumination": slow_illumination(med),
    }


def summarise(stats: list[dict[str, float]]) -> dict[str, tuple[float, float, float]]:
    """Per statistic: (median, min, max) over frames."""
    keys = stats[0].keys() if stats else ()
    return {k: (float(np.median([s[k] for s in stats])), float(min(s[k] for s in stats)),
                float(max(s[k] for s in stats))) for k in keys}
