"""Labelled tiles -> one feature vector per well and time point, the unit the time-aware well
model and the plate-aware baselines read (numpy only; torch stays in ``temporal``).

A tiles export cuts each field into tiles; the daemon sees whole fields and cuts them into
tiles of the same size (``well_sequence.frame_features``). Averaging the tile features over a
well's tiles and fields at a time point gives the same vector on both sides.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from nscmonitor.scoring import well_sequence as WS
from nscmonitor.training.data import TileRecord, read_image


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
            by[(w.plate_key, h)].append(f)
    stats = {k: (np.mean(v, axis=0), np.maximum(np.std(v, axis=0), 1e-6)) for k, v in by.items()}
    return [np.stack([np.append((f - stats[(w.plate_key, h)][0]) / stats[(w.plate_key, h)][1], h / WS.HOURS_SCALE)
                      for h, f in zip(w.hours, w.features)]).astype(np.float32) for w in wells]
