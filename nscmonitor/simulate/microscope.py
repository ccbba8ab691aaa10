"""A time-lapse microscope that writes a simulated culture the way a vendor's software does.

``Microscope(...).frames()`` yields every image in scan order with its ground truth (for
tests and for the tiles export); ``Microscope(...).run(out_dir, speed=...)`` writes them to
disk at the pace of a real scan compressed ``speed`` times, file by file as the instrument
would (growing files or temp-name-then-rename, sidecars at the end of each scan), and keeps a
ground-truth manifest beside them. Clock and sleep are injectable so tests drive time.
"""

from __future__ import annotations

import csv
import io
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import numpy as np
import tifffile

from nscmonitor.core.domain import MULTICLASS, parse_well, well_name
from nscmonitor.core.errors import UserFacingError
from nscmonitor.simulate.artefacts import Artefacts, image_artefacts, plate_optics
from nscmonitor.simulate.biology import PlateBiology, WellBiology, plate_biology, well_biology
from nscmonitor.simulate.culture import (
    WELL_RADIUS_UM, Cells, ConditionMap, class_counts, default_plate_map, plate_conditions, seed_field, state_at,
)
from nscmonitor.simulate.render import Camera, edge_distance_um, field_origins_um, render
from nscmonitor.simulate.vendors import Run, Shot, acquired_at, vendor

MANIFEST_NAME = "simulation-manifest.csv"
MANIFEST_FIELDS = (
    "path", "plate", "plate_format", "well", "field", "timepoint", "elapsed_h", "acquired_at", "condition",
    "well_label", *(f"frac_{c}" for c in MULTICLASS), *(f"n_{c}" for c in MULTICLASS), "n_cells",
    "mean_commitment", "modality", "um_per_px", "bit_depth", "width", "height", "seed", "defocus_um",
    "autofocus_fail", "drift_gain", "jitter_px", "edge_field", "edge_drop", "bubble", "debris_n", "spheres_n",
    "haze", "flat_error", "jpeg_quality", "condition_set", *PlateBiology().record(), *WellBiology((0, 0, 0, 1), 0, 0, 0).record(),
)


@dataclass(frozen=True)
class Frame:
    relpath: str
    image: np.ndarray
    truth: dict
    shot: Shot


def tiff_bytes(image: np.ndarray, px_um: float) -> bytes:
    """An uncompressed TIFF with fixed tags (no date, no software): same array, same bytes."""
    buf = io.BytesIO()
    res = 1e4 / px_um
    tifffile.imwrite(buf, image, photometric="minisblack", metadata=None, software=False,
                     resolution=(res, res), resolutionunit="CENTIMETER")
    return buf.getvalue()


@dataclass
class Microscope:
    vendor: str = "incucyte"
    plate_format: int = 96
    fields: int = 4
    hours: float = 120.0
    interval_h: float = 2.0
    seed: int = 0
    plate_map: ConditionMap | None = None
    wells: Sequence[str] | None = None
    camera: Camera = field(default_factory=Camera)
    artefacts: Artefacts = field(default_factory=Artefacts)
    plate_name: str | None = None
    plate_index: int = 0
    condition_set: str = "recipes"  # without a plate map: recipes, dose or mixtures (biology.py)
    vary_biology: bool = True  # False: every plate and well exactly as its recipe says
    start: datetime = datetime(2025, 1, 6, 9, 0, 0)
    seconds_per_image: float = 1.5  # real stage move + autofocus + exposure per image

    def __post_init__(self) -> None:
        self._vendor = vendor(self.vendor)
        if self.plate_map is None:
            conds = plate_conditions(self.condition_set, seed=self.seed, plate=self.plate_index, n=6)
            self.plate_map = default_plate_map(self.plate_format, conds)
        if self.plate_map.plate_format != self.plate_format:
            raise UserFacingError(f"plate map is for {self.plate_map.plate_format} wells, plate has {self.plate_format}")
        if self.wells is None:
            self.wells = list(self.plate_map.wells)
        else:
            self.wells = [well_name(*parse_well(w)) for w in self.wells]
            missing = [w for w in self.wells if w not in self.plate_map.wells]
            if missing:
                raise UserFacingError(f"wells not in the plate map: {', '.join(missing)}")
        if self.fields < 1 or self.interval_h <= 0 or self.hours < 0:
            raise UserFacingError("need fields >= 1, interval > 0 and hours >= 0")
        self.plate_name = self.plate_name or f"NSC-P{self.plate_index + 1}-{self.seed}"
        channel = "Phase Contrast" if self.camera.modality == "phase" else "Bright Field"
        self._run = Run(self.plate_name, self.start, self.seed, self.plate_format, channel)
        self._optics = plate_optics(self.seed, self.plate_index, self.camera.bit_depth, self.artefacts)
        self._origins = field_origins_um(self.fields, self.camera.shape, self.camera.px_um)
        self.biology = plate_biology(self.seed, self.plate_index, self.vary_biology)
        self._wells_bio: dict[str, WellBiology] = {}

    @property
    def timepoints_h(self) -> list[float]:
        n = int(np.floor(self.hours / self.interval_h + 1e-9)) + 1
        return [round(k * self.interval_h, 6) for k in range(n)]

    def shots(self) -> Iterator[Shot]:
        """Time-major, then wells in plate order, then fields: the order a plate reader scans."""
        for t, hours in enumerate(self.timepoints_h, start=1):
            pos = 0
            for well in self.wells:
                for f in range(1, self.fields + 1):
                    yield Shot(self.plate_name, well, f, t, hours,
                               acquired_at(self.start, hours, pos, self.seconds_per_image), pos)
                    pos += 1

    def relpath(self, shot: Shot) -> str:
        return self._vendor.image_path(self._run, shot)

    def well_biology(self, well: str) -> WellBiology:
        """The well's draw on top of the plate's (fate shares, timing, density, deaths)."""
        if well not in self._wells_bio:
            cond = self.plate_map.condition(well)
            self._wells_bio[well] = well_biology(cond.fractions, cond.induced, self.biology, seed=self.seed,
                                                 plate_index=self.plate_index, well=well, vary=self.vary_biology)
        return self._wells_bio[well]

    def cells(self, well: str, field_index: int) -> Cells:
        return _seed_cached(self.plate_map.condition(well), self.camera.shape, self.camera.px_um, self.seed,
                            self.plate_index, well, field_index, max(336.0, self.hours + 1),
                            self.well_biology(well))

    def render(self, shot: Shot) -> Frame:
        cam = self.camera
        cells = self.cells(shot.well, shot.field)
        origin = self._origins[shot.field - 1]
        radius = WELL_RADIUS_UM[self.plate_format]
        art = image_artefacts(self.artefacts, seed=self.seed, plate=self.plate_index, well=shot.well,
                              field=shot.field, timepoint=shot.timepoint, hours=shot.elapsed_h,
                              field_edge_um=edge_distance_um(origin, cam.shape, cam.px_um, radius))
        st = state_at(cells, shot.elapsed_h)
        key = (self.seed, self.plate_index, shot.well, shot.field, shot.timepoint)
        image, art = render(cells, shot.elapsed_h, cam=cam, po=self._optics, art=art, key=key, origin_um=origin,
                            well_radius_um=radius, debris=self.artefacts.debris, state=st)
        # Counts use the cells whose centre is in the frame after the stage jitter.
        jx, jy = art.jitter_px
        x0, y0 = -jx * cam.px_um, -jy * cam.px_um
        x1, y1 = x0 + cam.shape[1] * cam.px_um, y0 + cam.shape[0] * cam.px_um
        counts = class_counts(st, x0, y0, x1, y1)
        inside = ~st.dead & (st.x >= x0) & (st.x < x1) & (st.y >= y0) & (st.y < y1)
        cond = self.plate_map.condition(shot.well)
        rel = self.relpath(shot)
        truth = {
            "path": rel, "plate": self.plate_name, "plate_format": self.plate_format, "well": shot.well,
            "field": shot.field, "timepoint": shot.timepoint, "elapsed_h": shot.elapsed_h,
            "acquired_at": shot.acquired_at.isoformat(), "condition": cond.name, "well_label": cond.label,
            **{f"frac_{c}": round(v, 4) for c, v in zip(MULTICLASS, cond.fractions)},
            **{f"n_{c}": int(v) for c, v in zip(MULTICLASS, counts)}, "n_cells": int(counts.sum()),
            "mean_commitment": round(float(st.s[inside].mean()) if inside.any() else 0.0, 4),
            "modality": cam.modality, "um_per_px": cam.px_um, "bit_depth": cam.bit_depth,
            "width": cam.shape[1], "height": cam.shape[0], "seed": self.seed, **art.flags(),
            "jpeg_quality": self._optics.jpeg_quality,
            "condition_set": self.condition_set, **self.biology.record(), **self.well_biology(shot.well).record(),
        }
        return Frame(rel, image, truth, shot)

    def frames(self) -> Iterator[Frame]:
        for shot in self.shots():
            yield self.render(shot)

    def run(self, out_dir: str | Path, *, speed: float = 600.0, stop_event: threading.Event | None = None,
            clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
            on_frame: Callable[[Frame], None] | None = None, manifest: str | Path | None = None) -> Path:
        """Write every frame under ``out_dir``; returns the manifest path. ``speed`` is the
        factor on real time (600: a 2 h interval takes 12 s); 0 writes as fast as possible."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        manifest_path = Path(manifest) if manifest else out / MANIFEST_NAME
        for rel, data in self._vendor.start_files(self._run):
            _write_atomic(out / rel, data)
        t0 = clock()
        pace = (lambda real_s: t0 + real_s / speed) if speed > 0 else None
        written_shots: list[Shot] = []
        written_paths: list[str] = []
        with open(manifest_path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS)
            writer.writeheader()
            current_t = None
            for shot in self.shots():
                if stop_event is not None and stop_event.is_set():
                    break
                if current_t is not None and shot.timepoint != current_t:
                    self._finish_scan(out, written_shots, written_paths)
                current_t = shot.timepoint
                if pace:
                    _sleep_until(pace(shot.elapsed_h * 3600 + shot.position * self.seconds_per_image), clock, sleep)
                frame = self.render(shot)
                pause = 0.3 * self.seconds_per_image / speed if speed > 0 else 0.0
                _write_like(self._vendor.write_mode, out / frame.relpath,
                            tiff_bytes(frame.image, self.camera.px_um), pause, sleep)
                written_shots.append(shot)
                written_paths.append(frame.relpath)
                writer.writerow(frame.truth)
                fh.flush()
                if on_frame:
                    on_frame(frame)
            if written_shots:
                self._finish_scan(out, written_shots, written_paths)
        return manifest_path

    def _finish_scan(self, out: Path, shots: list[Shot], paths: list[str]) -> None:
        for rel, data in self._vendor.scan_end_files(self._run, shots, paths):
            _write_atomic(out / rel, data)


@lru_cache(maxsize=48)
def _seed_cached(condition, shape, px_um, seed, plate, well, field_index, horizon, biology) -> Cells:
    return seed_field(condition, width_um=shape[1] * px_um, height_um=shape[0] * px_um, seed=seed,
                      plate=plate, well=well, field_index=field_index, horizon_h=horizon, biology=biology)


def _sleep_until(due: float, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
    wait = due - clock()
    if wait > 0:
        sleep(wait)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_like(mode: str, path: Path, data: bytes, pause: float, sleep: Callable[[float], None]) -> None:
    """``chunks``: the file appears at once and grows (a watcher sees a partial TIFF);
    ``rename``: written as ``<name>.tmp`` and renamed when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "rename":
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
        if pause > 0:
            sleep(pause)
        os.replace(tmp, path)
        return
    half = len(data) // 2
    with open(path, "wb") as fh:
        fh.write(data[:half])
        fh.flush()
        if pause > 0:
            sleep(pause)
        fh.write(data[half:])
