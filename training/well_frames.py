"""Labelled tiles -> one feature vector per well and time point, the unit the time-aware well
model and the plate-aware baselines read (numpy only; torch stays in ``temporal``).

A tiles export cuts each field into tiles; the daemon sees whole fields and cuts them into
tiles of the same size (``well_sequence.frame_features``). Averaging the tile features over a
well's tiles and fields at a time point gives the same vector on both sides.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from nscmonitor.scoring import well_sequence as WS
from nscmonitor.scoring.preprocess import tile_px_at
from nscmonitor.training.data import TileRecord, read_image, read_plane


@dataclass
class Well:
    """One well's frames in time order, its truth and where it sits."""

    key: tuple[str, str, str]
    label: str
    split: str | None
    condition: str
    hours: list[float] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)
    records: list[TileRecord] = field(default_factory=list)  # one representative per time point

    @property
    def plate_key(self) -> tuple[str, str]:
        return self.key[:2]


def tile_feature_table(records: Sequence[TileRecord]) -> np.ndarray:
    """Model features of every record's tile (one tile per file in a tiles export)."""
    return np.asarray([WS.tile_vector(read_image(r.path, channel=r.channel)) for r in records], np.float64)


def wells_of(records: Sequence[TileRecord], tile_feats: np.ndarray) -> list[Well]:
    """Group tiles into wells and time points (mean feature over tiles and fields)."""
    groups: dict[tuple, dict[float, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, r in enumerate(records):
        if r.elapsed_h is None:
            raise ValueError(f"{r.path}: the well model needs each tile's hours since induction")
        groups[r.well_key][float(r.elapsed_h)].append(i)
    out = []
    for key, by_h in sorted(groups.items()):
        first = records[next(iter(by_h.values()))[0]]
        w = Well(key=key, label=first.label, split=first.split, condition=first.condition)
        for h in sorted(by_h):
            idx = by_h[h]
            w.hours.append(h)
            w.features.append(tile_feats[idx].mean(axis=0))
            w.records.append(records[idx[0]])
        out.append(w)
    return out


def plate_references(wells: Sequence[Well]) -> dict[tuple[str, str], WS.PlateReference]:
    """Each plate's induction-scan reference from its wells' induction frames (plates without
    one are absent)."""
    induction: dict[tuple, list[np.ndarray]] = defaultdict(list)
    for w in wells:
        for h, f in zip(w.hours, w.features):
            if WS.is_induction(h):
                induction[w.plate_key].append(f)
                break
    return {p: WS.plate_reference(v) for p, v in induction.items()}


def well_start(w: Well) -> np.ndarray | None:
    return next((f for h, f in zip(w.hours, w.features) if WS.is_induction(h)), None)


def sequences(wells: Sequence[Well], normalisation: str) -> list[np.ndarray]:
    """Each well's T x D model input (all its frames; causality is the model's)."""
    refs = plate_references(wells) if normalisation != "none" else {}
    return [WS.sequence(list(zip(w.hours, w.features)), refs.get(w.plate_key), well_start(w), normalisation)
            for w in wells]


def same_hour_plate_z(wells: Sequence[Well]) -> list[np.ndarray]:
    """Reference only (not served): each frame z-scored over the plate's wells at the same
    hour. Needs the whole scan and depends on what the plate holds."""
    by: dict[tuple, list[np.ndarray]] = defaultdict(list)
    for w in wells:
        for h, f in zip(w.hours, w.features):
            by[(w.plate_key, h)].append(WS.model_part(f))
    stats = {k: (np.mean(v, axis=0), np.maximum(np.std(v, axis=0), 1e-6)) for k, v in by.items()}
    return [np.stack([np.append((f - stats[(w.plate_key, h)][0]) / stats[(w.plate_key, h)][1], h / WS.HOURS_SCALE)
                      for h, f in zip(w.hours, map(WS.model_part, w.features))]).astype(np.float32) for w in wells]


def record_features(record: TileRecord, tile_px: int, source_um: float | None = None) -> np.ndarray:
    """One image's features as the daemon's second stage computes them: the mean over its
    tiles (a simulator export's file is one such tile; a store export points at whole
    frames) of ``tile_px`` pixels of the export's ``source_um``, i.e. the same physical field
    in an image of another magnification, as the daemon cuts it (``forecast.tile_px_for``)."""
    img, image_um = read_plane(record.path, channel=record.channel, fallback_um=record.pixel_size_um)
    return WS.frame_features(img, tile_px_at(tile_px, source_um, image_um))


#: below this many images a process pool costs more to start than it saves
POOL_MIN_IMAGES = 256


def read_features(records: Sequence[TileRecord], tile_px: int, workers: int | None = None,
                  source_um: float | None = None) -> Iterator[np.ndarray]:
    """``record_features`` of each record, in order. Reading and measuring the images is most of
    a forecast training's time (some 20 ms per 224 px field, 0.7 s per 1408 x 1040 frame), and
    each image stands alone, so many images are spread over ``workers`` processes (default:
    every CPU). Spawned, not forked: a forked child of a process whose torch thread pools are
    running can deadlock (so a script calling this needs the ``if __name__ == "__main__"``
    guard, as for any spawned pool)."""
    n = workers if workers is not None else (os.cpu_count() or 1)
    if n <= 1 or len(records) < POOL_MIN_IMAGES:
        yield from (record_features(r, tile_px, source_um) for r in records)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(record_features, records, [tile_px] * len(records), [source_um] * len(records),
                            chunksize=max(1, min(64, len(records) // (8 * n))))
