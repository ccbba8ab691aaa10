"""One frame of one field at one hour: cells -> optics -> artefacts -> camera counts."""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from nscmonitor.simulate import optics, raster, well_objects
from nscmonitor.simulate.artefacts import ImageArtefacts, PlateOptics
from nscmonitor.simulate.culture import Cells, CellState, state_at
from nscmonitor.simulate.morphology import draw_cells
from nscmonitor.simulate.seeds import rng_for

FULL_WELL_E = 16000.0  # electrons at full scale: sets shot noise relative to signal
DEFOCUS_BLUR = 0.3  # geometric blur radius per µm of defocus at NA ~0.3 (tan asin 0.3)


@dataclass(frozen=True)
class Camera:
    shape: tuple[int, int] = (1040, 1408)  # rows, columns
    px_um: float = 1.24  # 10x objective
    bit_depth: int = 8  # 8 -> uint8; 12 -> uint16 holding 0..4095
    modality: str = "phase"  # or "brightfield"
    bf_defocus_um: float = 3.0  # bright field is imaged slightly out of focus to see anything

    @property
    def full_scale(self) -> int:
        return 255 if self.bit_depth == 8 else 4095

    @property
    def dtype(self) -> type:
        return np.uint8 if self.bit_depth == 8 else np.uint16


def field_origins_um(n_fields: int, shape: tuple[int, int], px_um: float) -> list[tuple[float, float]]:
    """Top-left corner of each field relative to the well centre (µm): a centred grid of
    adjacent frames, the way a 4-field Incucyte scan tiles the middle of a 96-well."""
    h, w = shape[0] * px_um, shape[1] * px_um
    cols = int(np.ceil(np.sqrt(n_fields)))
    rows = int(np.ceil(n_fields / cols))
    out = []
    for i in range(n_fields):
        r, c = divmod(i, cols)
        out.append(((c - cols / 2) * w, (r - rows / 2) * h))
    return out


def edge_distance_um(origin: tuple[float, float], shape: tuple[int, int], px_um: float, well_radius: float) -> float:
    """Distance from the field's farthest corner to the well wall (negative: frame crosses it)."""
    x0, y0 = origin
    x1, y1 = x0 + shape[1] * px_um, y0 + shape[0] * px_um
    far = max(np.hypot(x, y) for x in (x0, x1) for y in (y0, y1))
    return float(well_radius - far)


@lru_cache(maxsize=8)
def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    return np.linspace(-1, 1, h)[:, None], np.linspace(-1, 1, w)[None, :]


@lru_cache(maxsize=8)
def _flat_field(shape: tuple[int, int], v: float, tilt: tuple[float, float]) -> np.ndarray:
    """Vignetting S = 1 - v (r / r_max)^2 times a linear tilt; fixed per plate, so cached."""
    gy, gx = _grid(shape)
    flat = (1.0 - v * (gx * gx + gy * gy) / 2.0) * (1.0 + tilt[0] * gx + tilt[1] * gy)
    return flat.astype(np.float32)


@lru_cache(maxsize=8)
def _fixed_pattern(seed: int, shape: tuple[int, int]) -> np.ndarray:
    """The sensor's fixed-pattern offset: the same for every frame of a run."""
    return rng_for(seed, "sensor", *shape).normal(0.0, 0.003, shape).astype(np.float32)


def _illumination(cam: Camera, po: PlateOptics, art: ImageArtefacts, origin_um: tuple[float, float],
                  well_radius_um: float, key: tuple) -> np.ndarray:
    flat = _flat_field(cam.shape, po.vignetting_v, po.tilt) * np.float32(art.drift_gain)
    if art.edge_field:
        # Meniscus: light falls off towards the wall, over 200-500 µm, darker beyond it.
        h, w = cam.shape
        xs = origin_um[0] + (np.arange(w) + 0.5) * cam.px_um
        ys = origin_um[1] + (np.arange(h) + 0.5) * cam.px_um
        r = np.hypot(xs[None, :], ys[:, None])
        width = 350.0
        t = np.clip((r - (well_radius_um - width)) / width, 0.0, 1.5)
        flat = flat * (1.0 - art.edge_drop * np.minimum(t * t, 1.0) - 0.3 * np.clip(t - 1.0, 0, 0.5))
    if art.haze > 0:
        small = rng_for(*key, "haze").normal(0.0, art.haze, (cam.shape[0] // 128 + 2, cam.shape[1] // 128 + 2))
        flat = flat * (1.0 + optics.upsample(small, 128, cam.shape))
    return flat.astype(np.float32, copy=False)


def _bubble(cam: Camera, key_well: tuple, origin_um: tuple[float, float], well_radius_um: float) -> np.ndarray | None:
    """A ring with a thick dark edge and a bright inner rim; stays put for the whole run."""
    rng = rng_for(*key_well, "bubble-place")
    rad = rng.uniform(25.0, 250.0)
    ang, dist = rng.uniform(0, 2 * np.pi), np.sqrt(rng.random()) * (well_radius_um - rad)
    bx, by = dist * np.cos(ang), dist * np.sin(ang)
    h, w = cam.shape
    xs = origin_um[0] + (np.arange(w) + 0.5) * cam.px_um - bx
    ys = origin_um[1] + (np.arange(h) + 0.5) * cam.px_um - by
    d = np.hypot(xs[None, :], ys[:, None]) - rad
    if np.abs(d).min() > 30.0:
        return None
    edge = 8.0
    return -0.45 * np.exp(-(d / edge) ** 2) + 0.25 * np.exp(-((d + 1.5 * edge) / (0.6 * edge)) ** 2)


def render(cells: Cells, hours: float, *, cam: Camera, po: PlateOptics, art: ImageArtefacts,
           key: tuple, origin_um: tuple[float, float] = (0.0, 0.0), well_radius_um: float = 1e9,
           debris: bool = True, state: CellState | None = None) -> tuple[np.ndarray, ImageArtefacts]:
    """Camera counts for ``cells`` at ``hours``. ``key`` = (seed, plate, well, field, timepoint)
    names the noise streams; the returned ImageArtefacts carries the debris count."""
    st = state if state is not None else state_at(cells, hours)
    n_debris = 0
    sphi, sbr, n_spheres = well_objects.neurospheres(key[:4], cam.shape, cam.px_um, art.jitter_px, hours,
                                                     bool(cells.commits.any()))
    extra = (sphi, sbr)
    if debris:
        dphi, dbr, n_debris = well_objects.debris(key, cam.shape, cam.px_um)
        extra = (raster.merge(sphi, dphi), raster.merge(sbr, dbr))
    phi, br = draw_cells(cells, st, hours, cam.shape, cam.px_um, art.jitter_px, extra)
    phi, br = phi.astype(np.float32), br.astype(np.float32)  # half the memory traffic from here on
    # Fine intracellular texture: the optical path of every structure carries granules.
    tex = optics.granules(cam.shape, *_grain_offset(key)) * np.float32(po.texture)
    tex += 1.0
    np.maximum(tex, 0.0, out=tex)
    phi *= tex
    transfer = optics.otf(cam.shape, round(po.psf_px, 2), round(DEFOCUS_BLUR * abs(art.defocus_um) / cam.px_um, 1))
    if cam.modality == "phase":
        halo = optics.halo_transfer(cam.shape, round(po.halo_um / cam.px_um, 2), round(po.shade_um / cam.px_um, 1),
                                    round(po.shade_weight, 3))
        ratio = optics.phase_image(phi, br, alpha=po.alpha, beta=po.beta, halo=halo, transfer=transfer)
    elif cam.modality == "brightfield":
        ratio = optics.bright_field_image(phi, defocus_um=cam.bf_defocus_um + art.defocus_um, transfer=transfer)
    else:
        raise ValueError(f"unknown modality {cam.modality!r}")
    if art.bubble:
        ring = _bubble(cam, key[:3], origin_um, well_radius_um)
        if ring is not None:
            ratio += ring
    fs = cam.full_scale
    signal = np.float32(fs * po.background) * ratio * _illumination(cam, po, art, origin_um, well_radius_um, key)
    np.clip(signal, 0.0, None, out=signal)
    rng = rng_for(*key, "noise")
    if po.read_noise_dn > 0:
        sd = np.sqrt(signal * np.float32(fs / FULL_WELL_E) + np.float32(po.read_noise_dn**2))
        signal += sd * rng.standard_normal(cam.shape, dtype=np.float32)
    if po.dark_offset > 0:
        # With flat-field correction the instrument takes the mean dark offset off again; its
        # fixed pattern stays.
        signal += np.float32(fs) * (np.float32(0.0 if po.flat_field else po.dark_offset)
                                    + _fixed_pattern(key[0], cam.shape))
    if po.flat_field:
        # ...and divides by its (nearly exact) estimate of the plate's flat field. Meniscus,
        # haze and gain drift are not in that estimate.
        signal /= _flat_field(cam.shape, po.vignetting_v, po.tilt) * np.float32(1.0 + art.flat_error)
    out = np.clip(np.rint(signal), 0, fs).astype(cam.dtype)
    if po.jpeg_quality and cam.bit_depth == 8:
        out = _jpeg(out, po.jpeg_quality)
    return out, replace(art, debris_n=n_debris, spheres_n=n_spheres)


def _grain_offset(key: tuple) -> tuple[int, int]:
    """Where a field's window into the granule field starts: fixed per (seed, plate, well,
    field), so the texture stays with the field across time points."""
    rng = rng_for(*key[:4], "grain")
    return int(rng.integers(0, 1 << 16)), int(rng.integers(0, 1 << 16))


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """A JPEG round trip (baseline, no chroma): the blocking and loss of the finest texture an
    exported frame carries."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf), dtype=np.uint8)
