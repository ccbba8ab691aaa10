"""Well readouts (``well_readouts``): one row per well, time and model version, aggregated
from the well's scored images by ``core.aggregate`` whenever one of them is stored.

A stored batch touches a few (well, time) keys; all of them are recomputed with one read of
their images and one upsert, whatever their number: on PostgreSQL each statement is a round
trip to the server, and one query per key was most of the store's time per image."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime

import numpy as np
from sqlalchemy import delete, select, tuple_
from sqlalchemy.orm import Session

from nscmonitor.core.aggregate import ImageScore, well_aggregate
from nscmonitor.core.calibration import WellCalibration, well_calibration_of
from nscmonitor.core.queue import QueueState
from nscmonitor.store import models as m
from nscmonitor.store.places import upsert

#: what a readout is computed from: a scored image of the key and its prediction by the version
_SOURCE = (m.Image.well_id, m.Image.time_key, m.Image.qc_passed, m.Image.elapsed_h, m.Image.acquired_at,
           m.Image.timepoint, m.Prediction.prob_mean, m.Prediction.prob_sd, m.Prediction.fraction,
           m.Prediction.n_tiles, m.Prediction.confidence, m.Prediction.classes, m.Prediction.ood)
#: the readout's columns an upsert replaces (its key stays)
_VALUES = ("plate_id", "timepoint", "elapsed_h", "acquired_at", "classes", "prob_mean", "prob_sd", "fraction",
           "n_images", "n_tiles", "n_qc_failed", "confidence", "n_ood", "updated_at")


def recompute_readouts(s: Session, keys: Iterable[tuple[int, int, str]], plate_of: Mapping[int, int],
                       now: datetime, calibration: Mapping[str, WellCalibration | None] | None = None, *,
                       counted: tuple[QueueState, ...] = (QueueState.DONE,)) -> None:
    """The readouts of the (well id, time key, model version) ``keys``, from all their scored
    images (called inside the transaction that stored them, so readouts and images never
    disagree). ``plate_of``: well id -> plate id for the keys' wells. A key with neither a
    prediction nor a QC failure gets no readout (and loses the one it had). ``calibration``:
    model version -> the serving model's well calibration (None or absent: the plain mean, as
    for models without one). ``counted``: the states whose images count (one waiting to be
    rescored by a new model, or being rescored, still counts in the older versions' readouts)."""
    by_version: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for well_id, time_key, version in keys:
        by_version[version].add((well_id, time_key))
    rows, empty = [], []
    for version, pairs in sorted(by_version.items()):
        images: dict[tuple[int, int], list] = defaultdict(list)
        for r in s.execute(select(*_SOURCE)
                           .outerjoin(m.Prediction, (m.Prediction.image_id == m.Image.id)
                                      & (m.Prediction.model_version == version))
                           .where(tuple_(m.Image.well_id, m.Image.time_key).in_(sorted(pairs)),
                                  m.Image.status.in_(list(counted)))):
            images[(r.well_id, r.time_key)].append(r)
        cal = (calibration or {}).get(version)
        for well_id, time_key in sorted(pairs):
            values = readout_values(images.get((well_id, time_key), []), cal)
            if values is not None:
                rows.append({"well_id": well_id, "time_key": time_key, "model_version": version,
                             "plate_id": plate_of[well_id], "updated_at": now, **values})
            else:
                empty.append((well_id, time_key, version))
    if rows:
        upsert(s, m.WellReadout.__table__, ("well_id", "time_key", "model_version"), rows, _VALUES)
    # a key none of whose images counts any more (its channel is no longer scored) keeps no
    # readout: the one it had would disagree with the images
    r = m.WellReadout
    for i in range(0, len(empty), 300):
        s.execute(delete(r).where(tuple_(r.well_id, r.time_key, r.model_version).in_(empty[i:i + 300])))


def readout_values(imgs: list, calibration: WellCalibration | None) -> dict | None:
    """One key's readout columns from its scored images (rows of ``_SOURCE``); None when none
    of them has a prediction or failed QC."""
    classes = next((r.classes for r in imgs if r.classes), None)
    if classes is None and not any(r.qc_passed is False for r in imgs):
        return None
    entries = []
    for r in imgs:
        score = None
        if r.prob_mean is not None:
            score = ImageScore(np.asarray(r.prob_mean), np.asarray(r.prob_sd), np.asarray(r.fraction),
                               r.n_tiles, r.confidence)
        entries.append((score, bool(r.qc_passed)))
    agg = well_aggregate(entries, len(classes or []), calibration)
    elapsed = [r.elapsed_h for r in imgs if r.elapsed_h is not None]
    acquired = [r.acquired_at for r in imgs if r.acquired_at is not None]
    return {"timepoint": next((r.timepoint for r in imgs if r.timepoint is not None), None),
            "elapsed_h": float(np.mean(elapsed)) if elapsed else None,
            "acquired_at": min(acquired) if acquired else None,
            "classes": list(classes or []),
            "prob_mean": agg.prob_mean, "prob_sd": agg.prob_sd, "fraction": agg.fraction,
            "n_images": agg.n_images, "n_tiles": agg.n_tiles, "n_qc_failed": agg.n_qc_failed,
            "confidence": agg.confidence if agg.n_images else None,
            "n_ood": flagged_images(r.ood for r in imgs if r.prob_mean is not None)}


def flagged_images(flags) -> int | None:
    """Images flagged out of distribution; None when no image has a flag (the model gives none)."""
    known = [bool(f) for f in flags if f is not None]
    return sum(known) if known else None


def recompute_for_images(s: Session, images: list, now: datetime, calibrations: Mapping[str, WellCalibration | None],
                         *, counted: tuple[QueueState, ...]) -> int:
    """The readouts of every (well, time, version) the images (rows with ``id``, ``well_id``,
    ``time_key``) count in: each version that has a readout of their wells and times, or a
    prediction of them; for images whose state just changed. Returns how many were recomputed."""
    pairs = sorted({(r.well_id, r.time_key) for r in images if r.well_id is not None and r.time_key is not None})
    if not pairs:
        return 0
    keys: set[tuple[int, int, str]] = set()
    wr = m.WellReadout
    for i in range(0, len(pairs), 500):
        keys |= set(s.execute(select(wr.well_id, wr.time_key, wr.model_version)
                              .where(tuple_(wr.well_id, wr.time_key).in_(pairs[i:i + 500]))).all())
    ids = [r.id for r in images]
    place = {r.id: (r.well_id, r.time_key) for r in images if r.well_id is not None and r.time_key is not None}
    for i in range(0, len(ids), 500):
        for image_id, version in s.execute(select(m.Prediction.image_id, m.Prediction.model_version)
                                           .where(m.Prediction.image_id.in_(ids[i:i + 500]))):
            if image_id in place:
                keys.add((*place[image_id], version))
    if not keys:
        return 0
    versions = sorted({v for _, _, v in keys})
    cal = {v: well_calibration_of((meta or {}).get("extra")) for v, meta in
           s.execute(select(m.ModelVersion.version, m.ModelVersion.meta).where(m.ModelVersion.version.in_(versions)))}
    cal.update(calibrations)
    wells = sorted({w for w, _, _ in keys})
    plate_of = dict(s.execute(select(m.Well.id, m.Well.plate_id).where(m.Well.id.in_(wells))).all())
    recompute_readouts(s, keys, plate_of, now, cal, counted=counted)
    return len(keys)
