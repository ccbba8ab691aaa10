"""Vectorised drawing into a flat float accumulator (pixels; x = column, y = row).

Every primitive is turned into (flat index, weight) pairs, a :data:`Splat`, and all splats
of a map are summed with one ``np.bincount`` in :func:`paint`: thousands of cells cost a few
array operations instead of a Python loop per cell, and the frame-sized accumulator is
allocated once, which is what makes a 1408 x 1040 frame render in tens of milliseconds.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

_BUCKETS = (3, 6, 10, 16, 26, 40, 64, 100)


Splat = tuple[np.ndarray, np.ndarray]
EMPTY: Splat = (np.empty(0, np.int64), np.empty(0))


def _accumulate(shape: tuple[int, int], ix: np.ndarray, iy: np.ndarray, w: np.ndarray) -> Splat:
    h, wd = shape
    ok = (ix >= 0) & (ix < wd) & (iy >= 0) & (iy < h) & (w != 0)
    return iy[ok].astype(np.int64) * wd + ix[ok], w[ok]


def paint(shape: tuple[int, int], *splats: Splat) -> np.ndarray:
    """Sum splats into an (H, W) map."""
    idx = np.concatenate([s[0] for s in splats] + [EMPTY[0]])
    w = np.concatenate([s[1] for s in splats] + [EMPTY[1]])
    return np.bincount(idx, weights=w, minlength=shape[0] * shape[1]).astype(np.float64, copy=False).reshape(shape)


def merge(*splats: Splat) -> Splat:
    """One splat from several (to hand a map's extra objects over as one)."""
    return _join(list(splats))


def _join(parts: list[Splat]) -> Splat:
    if not parts:
        return EMPTY
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _buckets(radius: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Group shapes by stamp half-size so small somata do not pay for large sheets."""
    out = []
    lo = 0.0
    for hs in _BUCKETS:
        sel = np.flatnonzero((radius > lo) & (radius <= hs - 1))
        if len(sel):
            out.append((hs, sel))
        lo = hs - 1
    big = np.flatnonzero(radius > lo)
    if len(big):
        out.append((int(np.ceil(radius[big].max())) + 1, big))
    return out


def ellipses(shape: tuple[int, int], cx, cy, a, b, theta, height, power: float = 0.5) -> Splat:
    """Elliptical caps ``height * (1 - rho^2)^power`` (power 0.5: a dome, 1: softer)."""
    acc: list[Splat] = []
    if len(cx) == 0:
        return EMPTY
    cx, cy, a, b, theta, height = (np.asarray(v, dtype=np.float64) for v in (cx, cy, a, b, theta, height))
    a, b = np.maximum(a, 0.5), np.maximum(b, 0.5)
    for hs, sel in _buckets(np.maximum(a, b)):
        g = np.arange(-hs, hs + 1)
        gx, gy = np.meshgrid(g, g)
        icx, icy = np.round(cx[sel]).astype(np.int64), np.round(cy[sel]).astype(np.int64)
        dx = gx[None] - (cx[sel] - icx)[:, None, None]
        dy = gy[None] - (cy[sel] - icy)[:, None, None]
        c, s = np.cos(theta[sel])[:, None, None], np.sin(theta[sel])[:, None, None]
        u = (dx * c + dy * s) / a[sel][:, None, None]
        v = (-dx * s + dy * c) / b[sel][:, None, None]
        w = height[sel][:, None, None] * np.clip(1.0 - u * u - v * v, 0.0, None) ** power
        acc.append(_accumulate(shape, icx[:, None, None] + gx[None], icy[:, None, None] + gy[None], w))
    return _join(acc)


def stars(shape: tuple[int, int], cx, cy, radius, lobes, height, edge: float = 0.35) -> Splat:
    """Flat star-shaped sheets: edge radius R(theta) = R * (1 + sum_k A_k cos(k theta + p_k)),
    a plateau of ``height`` falling to zero over ``edge * R``. ``lobes`` is (n, K, 2): per
    harmonic k = 2..K+1, amplitude and phase. Deep high harmonics give stellate astrocytes,
    shallow low ones polygonal flat sheets."""
    acc: list[Splat] = []
    if len(cx) == 0:
        return EMPTY
    cx, cy, radius, height = (np.asarray(v, dtype=np.float64) for v in (cx, cy, radius, height))
    reach = radius * (1.0 + np.abs(lobes[:, :, 0]).sum(axis=1))
    n_k = lobes.shape[1]
    rot = lobes[:, :, 0] * np.exp(1j * lobes[:, :, 1])  # (n, K): amplitude and phase per harmonic
    for hs, sel in _buckets(reach):
        g = np.arange(-hs, hs + 1)
        gx, gy = np.meshgrid(g, g)
        icx, icy = np.round(cx[sel]).astype(np.int64), np.round(cy[sel]).astype(np.int64)
        dx = gx[None] - (cx[sel] - icx)[:, None, None]
        dy = gy[None] - (cy[sel] - icy)[:, None, None]
        r = np.hypot(dx, dy)
        # R(theta) / R = 1 + sum_k Re(A_k e^{i p_k} e^{i k theta}): one matrix product with the
        # stamp's cos/sin k-theta basis (angles on the integer grid; the sub-pixel offset only
        # matters for r), several times cheaper than harmonics evaluated per stamp pixel.
        cos_b, sin_b = _angle_basis(hs, n_k)
        mod = 1.0 + (rot[sel].real @ cos_b - rot[sel].imag @ sin_b).reshape(r.shape)
        redge = radius[sel][:, None, None] * np.maximum(mod, 0.15)
        ramp = np.clip((redge - r) / (edge * radius[sel][:, None, None] + 1e-6), 0.0, 1.0)
        w = height[sel][:, None, None] * ramp * ramp * (3 - 2 * ramp)
        acc.append(_accumulate(shape, icx[:, None, None] + gx[None], icy[:, None, None] + gy[None], w))
    return _join(acc)


@lru_cache(maxsize=32)
def _angle_basis(hs: int, n_k: int) -> tuple[np.ndarray, np.ndarray]:
    """cos(k theta) and sin(k theta), k = 2..n_k+1, over a (2 hs + 1)² stamp, flattened."""
    g = np.arange(-hs, hs + 1)
    gx, gy = np.meshgrid(g, g)
    theta = np.arctan2(gy, gx).ravel()
    k = np.arange(2, n_k + 2)[:, None]
    return np.cos(k * theta), np.sin(k * theta)


def polylines(shape: tuple[int, int], verts: np.ndarray, weight: np.ndarray, spacing: float = 0.6) -> Splat:
    """Thin lines through ``verts`` (M, S+1, 2) with per-segment weight (M, S) per pixel of
    length, splatted bilinearly at ``spacing`` px so sub-pixel neurites keep their length."""
    if verts.size == 0:
        return EMPTY
    p0 = verts[:, :-1].reshape(-1, 2)
    d = (verts[:, 1:] - verts[:, :-1]).reshape(-1, 2)
    w = weight.reshape(-1)
    seg_len = np.hypot(d[:, 0], d[:, 1])
    keep = (seg_len > 0) & (w != 0)
    p0, d, w, seg_len = p0[keep], d[keep], w[keep], seg_len[keep]
    counts = np.maximum(1, np.ceil(seg_len / spacing).astype(np.int64))
    seg = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    frac = (np.arange(len(seg)) - starts[seg] + 0.5) / counts[seg]
    px = p0[seg, 0] + frac * d[seg, 0]
    py = p0[seg, 1] + frac * d[seg, 1]
    ws = w[seg] * seg_len[seg] / counts[seg]
    fx, fy = np.floor(px), np.floor(py)
    ax, ay = px - fx, py - fy
    ix, iy = fx.astype(np.int64), fy.astype(np.int64)
    return _accumulate(
        shape,
        np.concatenate([ix, ix + 1, ix, ix + 1]),
        np.concatenate([iy, iy, iy + 1, iy + 1]),
        np.concatenate([ws * (1 - ax) * (1 - ay), ws * ax * (1 - ay), ws * (1 - ax) * ay, ws * ax * ay]),
    )


def points(shape: tuple[int, int], x: np.ndarray, y: np.ndarray, w: np.ndarray) -> Splat:
    """Single-pixel impulses (nearest pixel)."""
    return _accumulate(shape, np.round(x).astype(np.int64), np.round(y).astype(np.int64), np.asarray(w, float))
