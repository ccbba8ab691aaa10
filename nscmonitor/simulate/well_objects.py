"""What lies in a field besides its cells: debris specks and fibres, and neurospheres.

Debris is new in every frame (specks and fibres settle, float and are washed away).
Neurospheres are remnants of the sphere culture the NSCs were passaged from: fixed per field
(seed, plate, well, field), the same in every condition at induction; after induction they
attach, flatten and spread (science.md §1.5: spheres attach within 24 h of serum induction),
while in control wells, which keep their growth factors, they keep growing. Everything here
is drawn into the same optical-path and phase-bright maps as the cells.
"""

from __future__ import annotations

import numpy as np

from nscmonitor.simulate import raster
from nscmonitor.simulate.seeds import rng_for

DEBRIS_PER_MM2 = 30.0
FIBRES_PER_MM2 = 1.5
SPHERES_PER_MM2 = 0.3


def debris(key: tuple, shape: tuple[int, int], px_um: float) -> tuple[raster.Splat, raster.Splat, int]:
    """Phase-bright specks 1-5 µm and thin curved fibres 20-200 µm: new ones every frame."""
    rng = rng_for(*key, "debris")
    h, w = shape
    area_mm2 = h * w * px_um**2 * 1e-6
    n = int(rng.poisson(DEBRIS_PER_MM2 * area_mm2))
    x, y = rng.uniform(0, w, n), rng.uniform(0, h, n)
    r = rng.uniform(0.5, 2.5, n) / px_um + 0.5
    phi = [raster.ellipses(shape, x, y, r, r, np.zeros(n), np.full(n, 1.0))]
    br = raster.ellipses(shape, x, y, r, r, np.zeros(n), np.full(n, 1.4), power=1.0)
    m = int(rng.poisson(FIBRES_PER_MM2 * area_mm2))
    if m:
        steps = 8
        length = rng.uniform(20.0, 200.0, m) / px_um / steps
        theta = rng.uniform(0, 2 * np.pi, (m, 1)) + np.cumsum(rng.normal(0.0, 0.15, (m, steps)), axis=1)
        v = np.zeros((m, steps + 1, 2))
        v[:, 0, 0], v[:, 0, 1] = rng.uniform(0, w, m), rng.uniform(0, h, m)
        v[:, 1:, 0] = v[:, :1, 0] + np.cumsum(length[:, None] * np.cos(theta), axis=1)
        v[:, 1:, 1] = v[:, :1, 1] + np.cumsum(length[:, None] * np.sin(theta), axis=1)
        phi.append(raster.polylines(shape, v, np.full((m, steps), 0.8)))
    return raster.merge(*phi), br, n + m


def neurospheres(key_field: tuple, shape: tuple[int, int], px_um: float, offset_px: tuple[float, float],
                 hours: float, induced: bool) -> tuple[raster.Splat, raster.Splat, int]:
    """Thick, phase-bright spheres 40-100 µm across with dark rims; after induction they
    flatten and spread over ~2 days, in controls they grow ~40 % in 5 days."""
    rng = rng_for(*key_field, "neurospheres")
    h, w = shape
    n = int(rng.poisson(SPHERES_PER_MM2 * h * w * px_um**2 * 1e-6))
    if n == 0:
        return raster.EMPTY, raster.EMPTY, 0
    x = rng.uniform(0, w, n) + offset_px[0]
    y = rng.uniform(0, h, n) + offset_px[1]
    r = rng.uniform(20.0, 50.0, n) / px_um
    aspect = rng.uniform(1.0, 1.25, n)
    angle = rng.uniform(0, np.pi, n)
    t = max(hours, 0.0)
    spread = min(t / 48.0, 1.0) if induced else 0.0
    r = r * (1.0 + 0.6 * spread) * (1.0 if induced else 1.0 + t / 300.0)
    height = np.full(n, 2.5 * (1.0 - 0.7 * spread))
    phi = raster.ellipses(shape, x, y, r * np.sqrt(aspect), r / np.sqrt(aspect), angle, height)
    br = raster.ellipses(shape, x, y, 0.8 * r * np.sqrt(aspect), 0.8 * r / np.sqrt(aspect), angle,
                         np.full(n, 1.5 * (1.0 - 0.8 * spread)), power=1.0)
    return phi, br, n
