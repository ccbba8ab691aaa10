"""Well readouts (``well_readouts``): one row per well, time and model version, aggregated
from the well's scored images by ``core.aggregate`` whenever one of them is stored."""

from __future__ import annotations

from datetime import datetime

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from nscmonitor.core.aggregate import ImageScore, well_aggregate
from nscmonitor.core.calibration import WellCalibration
from nscmonitor.core.queue import QueueState
from nscmonitor.store import models as m


def recompute_readout(s: Session, well_id: int, time_key: int, version: str, now: datetime,
                      calibration: WellCalibration | None = None) -> None:
    """The readout of one well at one time for one model version, from all its scored images
    (called inside the transaction that stored them, so readout and images never disagree).
    A well with neither a prediction nor a QC failure gets no readout. ``calibration``: the
    serving model's well calibration (None: the plain mean, as for models without one)."""
    imgs = s.execute(
        select(m.Image.id, m.Image.qc_passed, m.Image.elapsed_h, m.Image.acquired_at, m.Image.timepoint,
               m.Prediction.prob_mean, m.Prediction.prob_sd, m.Prediction.fraction, m.Prediction.n_tiles,
               m.Prediction.confidence, m.Prediction.classes, m.Prediction.ood)
        .outerjoin(m.Prediction, (m.Prediction.image_id == m.Image.id) & (m.Prediction.model_version == version))
        .where(m.Image.well_id == well_id, m.Image.time_key == time_key, m.Image.status == QueueState.DONE)
    ).all()
    classes = next((r.classes for r in imgs if r.classes), None)
    if classes is None and not any(r.qc_passed is False for r in imgs):
        return
    k = len(classes or [])
    entries = []
    for r in imgs:
        score = None
        if r.prob_mean is not None:
            score = ImageScore(np.asarray(r.prob_mean), np.asarray(r.prob_sd), np.asarray(r.fraction),
                               r.n_tiles, r.confidence)
        entries.append((score, bool(r.qc_passed)))
    agg = well_aggregate(entries, k, calibration)
    elapsed = [r.elapsed_h for r in imgs if r.elapsed_h is not None]
    acquired = [r.acquired_at for r in imgs if r.acquired_at is not None]
    plate_id = s.scalar(select(m.Well.plate_id).where(m.Well.id == well_id))
    readout = s.scalar(select(m.WellReadout).where(m.WellReadout.well_id == well_id,
                                                   m.WellReadout.time_key == time_key,
                                                   m.WellReadout.model_version == version))
    if readout is None:
        readout = m.WellReadout(well_id=well_id, plate_id=plate_id, time_key=time_key, model_version=version)
        s.add(readout)
    readout.timepoint = next((r.timepoint for r in imgs if r.timepoint is not None), None)
    readout.elapsed_h = float(np.mean(elapsed)) if elapsed else None
    readout.acquired_at = min(acquired) if acquired else None
    readout.classes = list(classes or [])
    readout.prob_mean, readout.prob_sd, readout.fraction = agg.prob_mean, agg.prob_sd, agg.fraction
    readout.n_images, readout.n_tiles, readout.n_qc_failed = agg.n_images, agg.n_tiles, agg.n_qc_failed
    readout.confidence = agg.confidence if agg.n_images else None
    readout.n_ood = flagged_images(r.ood for r in imgs if r.prob_mean is not None)
    readout.updated_at = now


def flagged_images(flags) -> int | None:
    """Images flagged out of distribution; None when no image has a flag (the model gives none)."""
    known = [bool(f) for f in flags if f is not None]
    return sum(known) if known else None
