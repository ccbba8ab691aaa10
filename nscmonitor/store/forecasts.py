"""The time-aware well model's rows: each scored image's features (``frame_features``) and
the well forecasts (``well_forecasts``). Plain dataclasses in and out; the ORM stays here."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from nscmonitor.core.queue import QueueState
from nscmonitor.store import models as m


@dataclass(frozen=True)
class Frame:
    """One stored image's features with where and when it was taken."""

    image_id: int
    plate_id: int
    well_id: int
    time_key: int
    elapsed_h: float | None
    values: tuple[float, ...]


@dataclass(frozen=True)
class Forecast:
    well_id: int
    plate_id: int
    time_key: int
    elapsed_h: float | None
    model_version: str
    model_sha256: str
    normalisation: str
    classes: tuple[str, ...]
    probs: tuple[float, ...]
    n_timepoints: int
    n_images: int
    n_reference_wells: int | None
    #: flagged by the forecast's own out-of-distribution score; None: the model has none
    ood: bool | None = None
    #: the well's frames up to this time that the score flags (None: no score)
    n_ood: int | None = None


@dataclass(frozen=True)
class ForecastRow:
    """A stored forecast as the export and the dashboard read it."""

    experiment: str
    plate: str
    well: str
    elapsed_h: float | None
    model_version: str
    normalisation: str
    classes: tuple[str, ...]
    probs: tuple[float, ...]
    n_timepoints: int
    n_images: int
    ood: bool | None = None
    n_ood: int | None = None


def save_features(Session: sessionmaker, items: Iterable[tuple[int, str, Sequence[float]]], now: datetime) -> None:
    """(image_id, extractor, values); an image scored again (rewritten) gets its new values."""
    with Session.begin() as s:
        for image_id, extractor, values in items:
            row = s.get(m.FrameFeatures, image_id)
            if row is None:
                row = m.FrameFeatures(image_id=image_id)
                s.add(row)
            row.extractor, row.feature_values, row.created_at = extractor, [float(v) for v in values], now


def plate_frames(Session: sessionmaker, image_ids: Sequence[int], extractors: Sequence[str],
                 induction_max_h: float, whole_plates: Callable[[set[int]], set[int]] | None = None,
                 ) -> tuple[list[Frame], list[Frame]]:
    """(the given images' frames, the frames a forecast of their wells needs) with features
    of one of ``extractors`` (the feature sets the caller reads), done images that passed QC only (a
    first scan found out of focus after its field's next scan leaves later forecasts). Needed:
    every frame of the given images' wells and the induction frames (at most ``induction_max_h``) of their plates; when a given
    image is itself an induction frame, every frame of its plate (all its wells' forecasts
    change), and so for the plates ``whole_plates`` picks from the batch's plates. A batch on a
    large plate so reads its wells, not the whole plate."""
    with Session() as s:
        given = s.execute(select(m.Well.plate_id, m.Image.well_id, m.Image.elapsed_h)
                          .join(m.Image, m.Image.well_id == m.Well.id).where(m.Image.id.in_(list(image_ids)))).all()
        plates = {p for p, _, _ in given}
        whole = {p for p, _, h in given if h is not None and h <= induction_max_h}
        whole |= whole_plates(plates) if whole_plates is not None else set()
        wells = {w for _, w, _ in given}
        needed = (m.Well.plate_id.in_(whole) | m.Image.well_id.in_(wells)
                  | (m.Image.elapsed_h <= induction_max_h))
        rows = s.execute(
            select(m.Image.id, m.Well.plate_id, m.Image.well_id, m.Image.time_key, m.Image.elapsed_h,
                   m.FrameFeatures.feature_values)
            .join(m.Well, m.Image.well_id == m.Well.id).join(m.FrameFeatures, m.FrameFeatures.image_id == m.Image.id)
            .where(m.Well.plate_id.in_(plates), needed, m.Image.status == QueueState.DONE,
                   m.Image.qc_passed.is_not(False),
                   m.FrameFeatures.extractor.in_(list(extractors)), m.Image.time_key.is_not(None))).all()
    frames = [Frame(i, p, w, t, h, tuple(v)) for i, p, w, t, h, v in rows]
    wanted = set(image_ids)
    return [f for f in frames if f.image_id in wanted], frames


def stored_features(engine, paths: Iterable[str], extractor: str) -> dict[str, tuple[float, ...]]:  # noqa: ANN001
    """Stored path -> the features the daemon kept for that image under ``extractor`` (images
    scored before a forecast model was configured have none). Asked for in chunks of paths, so
    a store far larger than the labelled set is never read whole."""
    wanted = list(dict.fromkeys(paths))
    out: dict[str, tuple[float, ...]] = {}
    with Session(engine) as s:
        for i in range(0, len(wanted), _CHUNK):
            rows = s.execute(select(m.Image.path, m.FrameFeatures.feature_values)
                             .join(m.FrameFeatures, m.FrameFeatures.image_id == m.Image.id)
                             .where(m.Image.path.in_(wanted[i:i + _CHUNK]), m.FrameFeatures.extractor == extractor,
                                    m.Image.status == QueueState.DONE))
            out.update((p, tuple(v)) for p, v in rows)
    return out


#: paths per query of ``stored_features`` (well under SQLite's and PostgreSQL's parameter limits)
_CHUNK = 500


def store_forecasts(Session: sessionmaker, forecasts: Iterable[Forecast], now: datetime) -> int:
    """Insert or update one row per (well, time, forecast model version)."""
    n = 0
    with Session.begin() as s:
        for f in forecasts:
            row = s.scalar(select(m.WellForecast).where(m.WellForecast.well_id == f.well_id,
                                                        m.WellForecast.time_key == f.time_key,
                                                        m.WellForecast.model_version == f.model_version))
            if row is None:
                row = m.WellForecast(well_id=f.well_id, time_key=f.time_key, model_version=f.model_version)
                s.add(row)
            row.plate_id, row.elapsed_h, row.model_sha256 = f.plate_id, f.elapsed_h, f.model_sha256
            row.normalisation, row.classes, row.probs = f.normalisation, list(f.classes), [float(p) for p in f.probs]
            row.n_timepoints, row.n_images, row.n_reference_wells = f.n_timepoints, f.n_images, f.n_reference_wells
            row.ood, row.n_ood = f.ood, f.n_ood
            row.updated_at = now
            n += 1
    return n


def read_forecasts(session: Session, experiment: str | None = None) -> list[ForecastRow]:
    """Every stored forecast (of one experiment), by plate, well and time."""
    q = (select(m.Experiment.name, m.Plate.name, m.Well.name, m.WellForecast.elapsed_h, m.WellForecast.model_version,
                m.WellForecast.normalisation, m.WellForecast.classes, m.WellForecast.probs,
                m.WellForecast.n_timepoints, m.WellForecast.n_images, m.WellForecast.ood, m.WellForecast.n_ood)
         .join(m.Well, m.WellForecast.well_id == m.Well.id).join(m.Plate, m.Well.plate_id == m.Plate.id)
         .join(m.Experiment, m.Plate.experiment_id == m.Experiment.id)
         .order_by(m.Experiment.name, m.Plate.name, m.Well.row, m.Well.col, m.WellForecast.time_key))
    if experiment is not None:
        q = q.where(m.Experiment.name == experiment)
    return [ForecastRow(e, p, w, h, v, n, tuple(c), tuple(pr), nt, ni, ood, no)
            for e, p, w, h, v, n, c, pr, nt, ni, ood, no in session.execute(q)]


def forecasts_of(engine, experiment: str | None = None) -> list[ForecastRow]:  # noqa: ANN001 (an SQLAlchemy engine)
    with Session(engine) as s:
        return read_forecasts(s, experiment)


@dataclass(frozen=True)
class ForecastCell:
    """One well's forecast at one time, as the dashboard shows it."""

    model_version: str
    classes: tuple[str, ...]
    probs: tuple[float, ...]
    n_timepoints: int
    elapsed_h: float | None
    ood: bool | None = None
    n_ood: int | None = None


def plate_forecasts(engine, plate_id: int) -> dict[tuple[str, int], ForecastCell]:  # noqa: ANN001 (an SQLAlchemy engine)
    """(well name, time key) -> forecast of the plate's most recently updated forecast model."""
    with Session(engine) as s:
        newest = s.execute(select(m.WellForecast.model_version).where(m.WellForecast.plate_id == plate_id)
                           .order_by(m.WellForecast.updated_at.desc()).limit(1)).scalar()
        if newest is None:
            return {}
        rows = s.execute(select(m.Well.name, m.WellForecast.time_key, m.WellForecast.classes, m.WellForecast.probs,
                                m.WellForecast.n_timepoints, m.WellForecast.elapsed_h, m.WellForecast.ood,
                                m.WellForecast.n_ood)
                         .join(m.Well, m.WellForecast.well_id == m.Well.id)
                         .where(m.WellForecast.plate_id == plate_id, m.WellForecast.model_version == newest)).all()
    return {(w, t): ForecastCell(newest, tuple(c), tuple(p), n, h, ood, no) for w, t, c, p, n, h, ood, no in rows}
