"""Imaging artefacts (science.md §3.6): which are on, and the values one image got.

Every artefact is a switch in :class:`Artefacts`; the values drawn for an image are returned
as :class:`ImageArtefacts` and go into the ground-truth manifest, so a QC test can ask
"was this frame defocused, and by how much". Values come from streams keyed by plate, well,
field and time point, so they do not depend on which other frames were rendered.

Departures: stage jitter is a translation only (no < 0.2 degree rotation, which would cost a
full-frame resampling for an effect below a pixel at the frame edge); shot noise is Gaussian
with Poisson variance (indistinguishable at these counts, four times faster).

The instrument's own processing is modelled too (``flat_field``, ``compression``): real
exports are flat-field corrected, so a flattened real frame keeps ~0.04 % of slow
illumination variation, not the few per cent of raw vignetting.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from nscmonitor.simulate.seeds import rng_for


ALPHA, BETA, TEXTURE = 0.6, 0.78, 0.8  # phase strength, phase-bright term, granule amplitude (tuned:
# image_stats.REAL_RANGES)


@dataclass(frozen=True)
class Artefacts:
    vignetting: bool = True
    dark_offset: bool = True
    drift: bool = True
    well_edge: bool = True
    focus: bool = True
    jitter: bool = True
    debris: bool = True
    bubbles: bool = True
    haze: bool = True
    noise: bool = True
    flat_field: bool = True  # the instrument divides by its flat field and takes off the dark offset
    compression: bool = True  # JPEG round trip (8-bit frames), as an export would

    @classmethod
    def none(cls) -> Artefacts:
        return cls(**{k: False for k in asdict(cls())})


@dataclass(frozen=True)
class PlateOptics:
    """Per plate: objective/apodisation and camera, fixed for the run."""

    alpha: float  # phase contrast strength
    beta: float  # phase-bright term
    halo_um: float  # sigma of the kernel's narrow core: the width of the bright halo
    shade_um: float  # sigma of its wide apodisation tail: shade-off in large flat cells
    shade_weight: float  # the tail's share of the kernel
    texture: float  # fine intracellular texture (granules), relative to the optical path
    psf_px: float
    background: float  # fraction of full scale
    vignetting_v: float
    tilt: tuple[float, float]
    dark_offset: float  # fraction of full scale
    read_noise_dn: float
    jpeg_quality: int  # 0: no compression
    flat_field: bool  # the instrument corrects vignetting and dark offset


@dataclass(frozen=True)
class ImageArtefacts:
    defocus_um: float
    autofocus_fail: bool
    drift_gain: float
    jitter_px: tuple[float, float]
    edge_field: bool
    edge_drop: float
    bubble: bool
    debris_n: int
    spheres_n: int
    haze: float
    flat_error: float  # relative error of the instrument's flat-field estimate

    def flags(self) -> dict[str, object]:
        return {
            "defocus_um": round(self.defocus_um, 3), "autofocus_fail": self.autofocus_fail,
            "drift_gain": round(self.drift_gain, 4), "jitter_px": f"{self.jitter_px[0]:.1f};{self.jitter_px[1]:.1f}",
            "edge_field": self.edge_field, "edge_drop": round(self.edge_drop, 3), "bubble": self.bubble,
            "debris_n": self.debris_n, "spheres_n": self.spheres_n, "haze": round(self.haze, 4), "flat_error": round(self.flat_error, 5),
        }


def plate_optics(seed: int, plate: int, bit_depth: int, sw: Artefacts) -> PlateOptics:
    rng = rng_for(seed, plate, "optics")
    vary = rng.uniform(0.8, 1.2)  # halo strength varies +-20 % between plates
    return PlateOptics(
        alpha=ALPHA * vary, beta=BETA * vary, halo_um=rng.uniform(1.3, 1.9), shade_um=rng.uniform(8.0, 14.0),
        shade_weight=rng.uniform(0.05, 0.15), texture=rng.uniform(0.8, 1.2) * TEXTURE, psf_px=rng.uniform(0.35, 0.45),
        background=rng.uniform(0.55, 0.70),
        vignetting_v=rng.uniform(0.03, 0.20) if sw.vignetting else 0.0,
        tilt=tuple(rng.uniform(-0.05, 0.05, 2)) if sw.vignetting else (0.0, 0.0),
        dark_offset=rng.uniform(0.01, 0.05) if sw.dark_offset else 0.0,
        read_noise_dn=(rng.uniform(0.5, 2.0) if bit_depth == 8 else rng.uniform(2.0, 10.0)) if sw.noise else 0.0,
        jpeg_quality=int(rng.integers(85, 96)) if (sw.compression and bit_depth == 8) else 0,
        flat_field=sw.flat_field,
    )


def drift_gain(seed: int, plate: int, hours: float) -> float:
    """Slow wobble of the lamp/camera gain (+-2-3 %) plus a step at each medium change
    (every 48-72 h); analytic in time so any hour can be computed alone."""
    rng = rng_for(seed, plate, "drift")
    amps, periods, phases = rng.uniform(0.004, 0.01, 3), rng.uniform(20, 150, 3), rng.uniform(0, 2 * np.pi, 3)
    changes = np.cumsum(rng.uniform(48.0, 72.0, 8))
    steps = rng.uniform(-0.025, 0.025, 8)
    level = steps[changes <= hours].sum()
    return float(1.0 + level + np.sum(amps * np.sin(2 * np.pi * hours / periods + phases)))


def image_artefacts(sw: Artefacts, *, seed: int, plate: int, well: str, field: int, timepoint: int,
                    hours: float, field_edge_um: float) -> ImageArtefacts:
    """``field_edge_um``: distance from the field's outermost corner to the well wall
    (negative when the frame reaches past it)."""
    rng = rng_for(seed, plate, well, field, timepoint, "artefacts")
    walk = rng_for(seed, plate, well, field, "focus").normal(0.0, 0.6, max(timepoint, 0) + 1)
    # Autofocus pulls back towards focus: an AR(1) walk, evaluated up to this time point.
    dz = 0.0
    for step in walk:
        dz = 0.6 * dz + step
    fail = bool(rng.random() < 0.02)
    if fail:
        dz = float(rng.choice([-1, 1]) * rng.uniform(5.0, 20.0))
    well_rng = rng_for(seed, plate, well, "bubble")
    return ImageArtefacts(
        defocus_um=float(dz) if sw.focus else 0.0,
        autofocus_fail=fail and sw.focus,
        drift_gain=drift_gain(seed, plate, hours) if sw.drift else 1.0,
        jitter_px=tuple(float(v) for v in rng.uniform(-5, 5, 2)) if sw.jitter else (0.0, 0.0),
        edge_field=sw.well_edge and field_edge_um < 500.0,
        edge_drop=float(rng_for(seed, plate, well, "edge").uniform(0.10, 0.40)) if sw.well_edge else 0.0,
        bubble=sw.bubbles and bool(well_rng.random() < 0.02),
        debris_n=0,  # filled in by the renderer from the frame area
        spheres_n=0,  # likewise
        # Condensation is an event, not the rule: a flattened real frame has ~0.04 % of slow
        # illumination variation left, so most frames get none.
        haze=float(rng.uniform(0.005, 0.025)) if (sw.haze and rng.random() < 0.05) else 0.0,
        flat_error=float(rng.normal(0.0, 0.0003)) if sw.flat_field else 0.0,
    )
