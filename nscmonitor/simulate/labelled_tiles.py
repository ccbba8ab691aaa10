"""Labelled tiles for training (a contract with ``nscmonitor.training``: keep the format).

``out_dir/tiles.json``: ``{"pixel_size_um", "tile_size", "classes", "seed", ...}``.
``out_dir/tiles.csv``: ``path,plate,well,field,timepoint,elapsed_h,condition,label,
frac_neuron,frac_astrocyte,frac_oligodendrocyte,frac_undifferentiated,split``; ``path`` is
relative to ``out_dir`` and names a 2-D TIFF of raw camera counts (not normalised).
``label`` is the majority fate of the live cells whose centre lies in the tile and the
fractions are their shares, so at 0 h a tile already carries the fate its cells will take:
that is what makes early accuracy measurable (near chance at 0 h by construction).
Splits are assigned by well (and a whole plate is held out for test when there are
several), so no well is in two splits. ``condition_set`` chooses the conditions
(biology.py): the fixed recipes, or doses and mixtures drawn per plate, so the held-out
plate can carry conditions no training plate had. tiles.json records every condition
(by name) and each plate's and well's biological draw (``biology``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nscmonitor.core.domain import MULTICLASS
from nscmonitor.simulate.artefacts import Artefacts
from nscmonitor.simulate.culture import ConditionMap, class_counts, default_plate_map, plate_conditions, state_at
from nscmonitor.simulate.microscope import Microscope
from nscmonitor.simulate.render import Camera
from nscmonitor.simulate.seeds import rng_for
from nscmonitor.simulate.vendors import Shot

TILES_COLUMNS = ("path", "plate", "well", "field", "timepoint", "elapsed_h", "condition", "label",
                 *(f"frac_{c}" for c in MULTICLASS), "split")
DEFAULT_HOURS = (0, 24, 48, 72, 96, 120)
TILE_CONDITIONS = ("neuron-directed", "astrocyte-directed", "oligodendrocyte-directed", "mixed", "undifferentiated")


def assign_splits(plates: int, wells_by_condition: dict[str, list[str]] | list[dict[str, list[str]]],
                  seed: int) -> dict[tuple[int, str], str]:
    """(plate, well) -> train/val/test, stratified by condition so every split sees every
    condition. With >= 2 plates the last plate is the test set; otherwise wells are split.
    ``wells_by_condition`` is one mapping for every plate, or one per plate."""
    out: dict[tuple[int, str], str] = {}
    for p in range(plates):
        per_plate = wells_by_condition[p] if isinstance(wells_by_condition, list) else wells_by_condition
        for cond, wells in per_plate.items():
            order = list(rng_for(seed, p, cond, "split").permutation(len(wells)))
            ws = [wells[i] for i in order]
            if plates >= 2 and p == plates - 1:
                out.update({(p, w): "test" for w in ws})
                continue
            n_val = max(1, round(0.2 * len(ws))) if len(ws) >= 3 else 0
            n_test = 0 if plates >= 2 else (max(1, round(0.2 * len(ws))) if len(ws) >= 3 else 0)
            for i, w in enumerate(ws):
                out[(p, w)] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out


def export_tiles(
    out_dir: str | Path,
    *,
    plates: int = 2,
    hours: Sequence[float] = DEFAULT_HOURS,
    tile_size: int = 224,
    seed: int = 0,
    plate_format: int = 96,
    wells_per_condition: int = 4,
    fields: int = 1,
    grid: tuple[int, int] = (2, 2),
    conditions: Sequence[str] = TILE_CONDITIONS,
    condition_set: str = "recipes",
    vary_biology: bool = True,
    pixel_size_um: float = 1.24,
    bit_depth: int = 12,
    modality: str = "phase",
    artefacts: Artefacts | None = None,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
) -> Path:
    """Render ``plates`` plates and cut each field into a ``grid`` (rows, cols) of tiles;
    returns the path of tiles.csv. Empty tiles (no live cell) are skipped. ``conditions``
    names the recipes used with ``condition_set="recipes"``; the other sets draw as many
    conditions per plate. ``workers`` > 1 renders plates in that many spawned processes (each
    plate's cultures and optics come from its own seed, so the export is the same file for
    file; ``progress`` then moves a plate at a time; a script calling this needs the
    ``if __name__ == "__main__"`` guard)."""
    out = Path(out_dir)
    (out / "tiles").mkdir(parents=True, exist_ok=True)
    cam = Camera(shape=(grid[0] * tile_size, grid[1] * tile_size), px_um=pixel_size_um, bit_depth=bit_depth,
                 modality=modality)
    maps, by_plate = _plate_maps(plates, plate_format, condition_set, conditions, wells_per_condition, seed)
    splits = assign_splits(plates, by_plate, seed)
    conds = {name: c for pm in maps for name, c in pm.conditions.items()}
    rows: list[dict] = []
    biology: dict[str, dict] = {}
    total = sum(len(ws) for wbc in by_plate for ws in wbc.values()) * fields * len(hours)
    jobs = [_PlateJob(out, p, maps[p], [w for ws in by_plate[p].values() for w in ws],
                      {w: splits[(p, w)] for ws in by_plate[p].values() for w in ws}, tuple(float(h) for h in hours),
                      fields, tile_size, grid, pixel_size_um, seed, plate_format, cam, artefacts or Artefacts(),
                      vary_biology) for p in range(plates)]
    done = 0
    for name, bio, plate_rows, n in _render_plates(jobs, workers, progress, total):
        biology[name] = bio
        rows += plate_rows
        done += n
        if progress and n:
            progress(done, total)
    return _write_index(out, rows, {
        "pixel_size_um": float(pixel_size_um), "tile_size": int(tile_size), "classes": list(MULTICLASS),
        "seed": int(seed), "plates": plates, "plate_format": plate_format, "hours": [float(h) for h in hours],
        "bit_depth": bit_depth, "dtype": "uint8" if bit_depth == 8 else "uint16", "modality": modality,
        "grid": list(grid), "fields": fields, "wells_per_condition": wells_per_condition,
        "conditions": {c: asdict(conds[c]) for c in conds}, "condition_set": condition_set,
        "vary_biology": vary_biology, "biology": biology,
    })


@dataclass(frozen=True)
class _PlateJob:
    """Everything one plate's rendering needs, picklable for a worker process."""

    out: Path
    plate: int
    plate_map: ConditionMap
    wells: list[str]
    splits: dict[str, str]
    hours: tuple[float, ...]
    fields: int
    tile_size: int
    grid: tuple[int, int]
    px_um: float
    seed: int
    plate_format: int
    camera: Camera
    artefacts: Artefacts
    vary_biology: bool


def _render_plate(job: _PlateJob, progress: Callable[[int], None] | None = None
                  ) -> tuple[str, dict, list[dict], int]:
    """(plate name, its biology record, its tiles' rows, fields rendered) of one plate."""
    scope = Microscope(vendor="incucyte", plate_format=job.plate_format, fields=job.fields, hours=max(job.hours),
                       seed=job.seed, plate_map=job.plate_map, wells=job.wells, camera=job.camera,
                       artefacts=job.artefacts, plate_index=job.plate, plate_name=f"sim-plate-{job.plate + 1}",
                       vary_biology=job.vary_biology)
    bio = {"plate": scope.biology.record(), "wells": {w: scope.well_biology(w).record() for w in job.wells}}
    rows: list[dict] = []
    n = 0
    for well in job.wells:
        for f in range(1, job.fields + 1):
            for t, h in enumerate(job.hours, start=1):
                shot = Shot(scope.plate_name, well, f, t, h, scope.start, 0)
                frame = scope.render(shot)
                st = state_at(scope.cells(well, f), h)
                for rel, counts in _cut_field(job.out, frame, st, plate=job.plate, well=well, field=f, hour=h,
                                              tile_size=job.tile_size, grid=job.grid, px_um=job.px_um):
                    rows.append(_tile_row(rel, shot, counts, job.plate_map.wells[well], job.splits[well]))
                n += 1
                if progress:
                    progress(1)
    return scope.plate_name, bio, rows, n


def _render_plates(jobs: list[_PlateJob], workers: int, progress: Callable[[int, int], None] | None,
                   total: int) -> Iterator[tuple[str, dict, list[dict], int]]:
    """Each plate's result in plate order: rendered here (progress per field) or by a pool of
    spawned processes (progress per plate)."""
    if workers <= 1 or len(jobs) <= 1:
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            if progress:
                progress(done[0], total)

        for job in jobs:
            name, bio, rows, n = _render_plate(job, tick)
            yield name, bio, rows, 0  # already counted field by field
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(_render_plate, jobs)


def _plate_maps(plates: int, plate_format: int, condition_set: str, conditions: Sequence[str],
                wells_per_condition: int, seed: int) -> tuple[list, list[dict[str, list[str]]]]:
    """Each plate's map (its conditions drawn from ``condition_set``) and the wells rendered
    for each of its conditions."""
    maps = [default_plate_map(plate_format, plate_conditions(condition_set, seed=seed, plate=p, n=len(conditions),
                                                             recipes=tuple(conditions)))
            for p in range(plates)]
    return maps, [{c: pm.wells_of(c)[:wells_per_condition] for c in pm.conditions} for pm in maps]


def _cut_field(out: Path, frame, state, *, plate: int, well: str, field: int, hour: float, tile_size: int,
               grid: tuple[int, int], px_um: float) -> list[tuple[str, np.ndarray]]:
    """Writes the tiles of one rendered field that hold a live cell, as 2-D TIFFs under
    ``out``; returns each one's path (relative to ``out``) and its cells' counts per fate. The
    tiles are placed in stage coordinates through the frame's jitter, so the counts are those of
    the cells the tile really shows."""
    import tifffile

    cut: list[tuple[str, np.ndarray]] = []
    jx, jy = (float(v) for v in frame.truth["jitter_px"].split(";"))
    for ty in range(grid[0]):
        for tx in range(grid[1]):
            x0 = (tx * tile_size - jx) * px_um
            y0 = (ty * tile_size - jy) * px_um
            counts = class_counts(state, x0, y0, x0 + tile_size * px_um, y0 + tile_size * px_um)
            if counts.sum() == 0:
                continue
            rel = f"tiles/p{plate + 1}/{well}/f{field}_t{int(round(hour)):03d}h_{ty}{tx}.tif"
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            tile = frame.image[ty * tile_size:(ty + 1) * tile_size, tx * tile_size:(tx + 1) * tile_size]
            tifffile.imwrite(path, np.ascontiguousarray(tile), photometric="minisblack",
                             metadata=None, software=False)
            cut.append((rel, counts))
    return cut


def _tile_row(rel: str, shot: Shot, counts: np.ndarray, condition: str, split: str) -> dict:
    """A tile's row of tiles.csv: its label is the majority fate of its cells."""
    frac = counts / counts.sum()
    return {
        "path": rel, "plate": shot.plate, "well": shot.well, "field": shot.field, "timepoint": shot.timepoint,
        "elapsed_h": shot.elapsed_h, "condition": condition,
        "label": MULTICLASS[int(np.argmax(counts))],
        **{f"frac_{c}": round(float(v), 4) for c, v in zip(MULTICLASS, frac)},
        "split": split,
    }


def _write_index(out: Path, rows: list[dict], meta: dict) -> Path:
    """tiles.csv (one row a tile) and tiles.json (how they were made, with the tile and split
    counts); returns the path of tiles.csv."""
    with open(out / "tiles.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=TILES_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    meta = {**meta, "n_tiles": len(rows),
            "split_counts": {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")},
            "label_rule": "majority fate of live cells whose centre lies in the tile",
            "generator": "nscmonitor.simulate"}
    (out / "tiles.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out / "tiles.csv"
