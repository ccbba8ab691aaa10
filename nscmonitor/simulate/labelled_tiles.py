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
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from nscmonitor.core.domain import MULTICLASS
from nscmonitor.simulate.artefacts import Artefacts
from nscmonitor.simulate.culture import class_counts, default_plate_map, plate_conditions, state_at
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
) -> Path:
    """Render ``plates`` plates and cut each field into a ``grid`` (rows, cols) of tiles;
    returns the path of tiles.csv. Empty tiles (no live cell) are skipped. ``conditions``
    names the recipes used with ``condition_set="recipes"``; the other sets draw as many
    conditions per plate."""
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
    done = 0
    for p in range(plates):
        chosen = [w for ws in by_plate[p].values() for w in ws]
        scope = Microscope(vendor="incucyte", plate_format=plate_format, fields=fields, hours=max(hours), seed=seed,
                           plate_map=maps[p], wells=chosen, camera=cam, artefacts=artefacts or Artefacts(),
                           plate_index=p, plate_name=f"sim-plate-{p + 1}", vary_biology=vary_biology)
        biology[scope.plate_name] = {"plate": scope.biology.record(),
                                     "wells": {w: scope.well_biology(w).record() for w in chosen}}
        for well in chosen:
            for f in range(1, fields + 1):
                for t, h in enumerate(hours, start=1):
                    shot = Shot(scope.plate_name, well, f, t, float(h), scope.start, 0)
                    frame = scope.render(shot)
                    st = state_at(scope.cells(well, f), float(h))
                    for rel, counts in _cut_field(out, frame, st, plate=p, well=well, field=f, hour=float(h),
                                                  tile_size=tile_size, grid=grid, px_um=pixel_size_um):
                        rows.append(_tile_row(rel, shot, counts, maps[p].wells[well], splits[(p, well)]))
                    done += 1
                    if progress:
                        progress(done, total)
    return _write_index(out, rows, {
        "pixel_size_um": float(pixel_size_um), "tile_size": int(tile_size), "classes": list(MULTICLASS),
        "seed": int(seed), "plates": plates, "plate_format": plate_format, "hours": [float(h) for h in hours],
        "bit_depth": bit_depth, "dtype": "uint8" if bit_depth == 8 else "uint16", "modality": modality,
        "grid": list(grid), "fields": fields, "wells_per_condition": wells_per_condition,
        "conditions": {c: asdict(conds[c]) for c in conds}, "condition_set": condition_set,
        "vary_biology": vary_biology, "biology": biology,
    })


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
