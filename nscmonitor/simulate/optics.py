"""Image formation: phase contrast and bright field from the optical-path map (science.md §3.5).

Phase contrast: ``I = B [1 - alpha (phi - K * phi)] + beta bright`` (Yin 2012's halo and
shade-off model), with K the apodised phase ring's kernel: a narrow core (sigma 1.3-1.9 µm)
that gives thin bright halos just outside edges and dark rims inside them, plus a weak wide
tail that makes large flat cells fade to background (shade-off); ``bright`` makes thick
rounded objects phase-bright. Bright field: ``I = B [1 - mu phi - dz kappa lap(G * phi)]``,
nearly invisible in focus, edge polarity flipping with the sign of dz. Both are seen through
an optical transfer function (Gaussian PSF times the geometric defocus OTF) and computed in
one pass through Fourier space. Earlier versions used a 4-6 µm Gaussian kernel and a
Gaussian defocus blur: halos were wide and soft, and a defocused frame only got softer.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import fft, ndimage, special


def upsample(small: np.ndarray, f: int, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a block-averaged image by an integer factor (cell-centred),
    separably: columns on the small image first, then rows, so only two full-size gathers."""
    h, w = shape

    def axis(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(n) + 0.5) / f - 0.5
        i0 = np.clip(np.floor(pos).astype(np.int64), 0, m - 1)
        return i0, np.minimum(i0 + 1, m - 1), np.clip(pos - i0, 0.0, 1.0)

    small = small.astype(np.float32, copy=False)
    x0, x1, wx = axis(w, small.shape[1])
    y0, y1, wy = axis(h, small.shape[0])
    wx, wy = wx.astype(np.float32), wy.astype(np.float32)
    cols = small[:, x0] * (1.0 - wx) + small[:, x1] * wx
    out = cols[y0]
    out += (cols[y1] - out) * wy[:, None]
    return out


@lru_cache(maxsize=8)
def _freq2(shape: tuple[int, int]) -> np.ndarray:
    """Squared radial frequency (cycles/px)² on the rfft2 grid of ``shape``."""
    fy = np.fft.fftfreq(shape[0]).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(shape[1]).astype(np.float32)[None, :]
    return fy * fy + fx * fx


@lru_cache(maxsize=16)
def otf(shape: tuple[int, int], psf_px: float, defocus_px: float) -> np.ndarray:
    """Optical transfer function: a Gaussian PSF times the geometric defocus OTF, the
    transform of a uniform disc of radius ``defocus_px``, 2 J1(x) / x with x = 2 pi r f. Unlike
    a Gaussian blur it has zeros and contrast reversals past its first zero, which is how a
    defocused microscope loses and inverts fine detail."""
    f2 = _freq2(shape)
    out = np.exp(np.float32(-2 * np.pi**2 * psf_px**2) * f2)
    if defocus_px > 0.05:
        x = np.float32(2 * np.pi * defocus_px) * np.sqrt(f2)
        with np.errstate(invalid="ignore", divide="ignore"):
            disc = np.where(x > 1e-6, 2.0 * special.j1(x) / x, 1.0)
        out = out * disc.astype(np.float32)
    return out


@lru_cache(maxsize=16)
def halo_transfer(shape: tuple[int, int], halo_px: float, shade_px: float, shade_weight: float) -> np.ndarray:
    """1 - K for the phase-contrast kernel K, a narrow core of sigma ``halo_px`` (the light
    the phase ring lets through from a thin neighbourhood: a thin bright halo just outside an
    edge and a dark rim inside it) plus a wide, weak apodisation tail of sigma ``shade_px``
    and weight ``shade_weight`` (shade-off: large flat cells fade to background inside)."""
    f2 = _freq2(shape)
    core = np.exp(np.float32(-2 * np.pi**2 * halo_px**2) * f2)
    tail = np.exp(np.float32(-2 * np.pi**2 * shade_px**2) * f2)
    return (1.0 - ((1.0 - shade_weight) * core + shade_weight * tail)).astype(np.float32)


def phase_image(phi: np.ndarray, bright: np.ndarray, *, alpha: float, beta: float, halo: np.ndarray,
                transfer: np.ndarray) -> np.ndarray:
    """Relative intensity (background 1) of a phase-contrast image, in one pass through
    Fourier space: ``1 - alpha (1 - K) * phi + beta bright``, all seen through ``transfer``
    (PSF and defocus). Linear, so two forward transforms and one inverse do everything."""
    spec = fft.rfft2(phi, workers=1)
    spec *= -np.float32(alpha) * halo
    spec += np.float32(beta) * fft.rfft2(bright, workers=1)
    spec *= transfer
    out = fft.irfft2(spec, s=phi.shape, workers=1)
    out += 1.0
    return out.astype(np.float32, copy=False)


def bright_field_image(phi: np.ndarray, *, defocus_um: float, transfer: np.ndarray, mu: float = 0.03,
                       kappa: float = 0.5, sigma_px: float = 1.5) -> np.ndarray:
    """Relative intensity of a bright-field image, ``1 - mu phi - dz kappa lap(G * phi)``
    (the transport-of-intensity term: near-invisible in focus, edge polarity flips with the
    sign of dz), seen through ``transfer``."""
    f2 = _freq2(phi.shape)
    lap = np.float32(-4 * np.pi**2) * f2 * np.exp(np.float32(-2 * np.pi**2 * sigma_px**2) * f2)
    spec = fft.rfft2(phi, workers=1)
    spec *= (-np.float32(mu) - np.float32(defocus_um * kappa) * lap) * transfer
    out = fft.irfft2(spec, s=phi.shape, workers=1)
    out += 1.0
    return out.astype(np.float32, copy=False)


@lru_cache(maxsize=4)
def _grain(shape: tuple[int, int]) -> np.ndarray:
    """A fixed field of fine granules (unit std, correlation ~1 px), twice the frame so any
    field can take its own window of it."""
    from nscmonitor.simulate.seeds import rng_for

    g = rng_for("grain", *shape).standard_normal((2 * shape[0], 2 * shape[1]), dtype=np.float32)
    g = ndimage.gaussian_filter(g, 0.7)
    return g / g.std()


def granules(shape: tuple[int, int], dy: int, dx: int) -> np.ndarray:
    """Intracellular texture for one field: a window of the fixed granule field at an offset
    the field's key picks, so a field keeps its texture from frame to frame."""
    g = _grain(shape)
    dy, dx = dy % shape[0], dx % shape[1]
    return g[dy:dy + shape[0], dx:dx + shape[1]]
