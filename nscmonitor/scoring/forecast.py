"""The daemon's second stage: after a batch of images is stored, their well-model features
are kept and the forecasts of their wells are recomputed by the time-aware well model
(``nscmonitor.training.temporal``), from each well's frames up to each time and the plate's
induction scan, normalised exactly as in training (``well_sequence``).

Per-image predictions and well readouts are the first stage's and stay as they are; the
forecast is added beside them in ``well_forecasts`` with its own model version and hash. A
forecast at time t reads only frames at or before t: a frame that arrives late (an earlier
time, or the induction scan) recomputes the forecasts it can change. A plate without an
induction scan gets no forecast (the normalisation needs one); nothing is guessed.
The stage runs after the batch's own transaction: if it fails, the readouts are stored
and the forecasts follow with the well's next image.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from nscmonitor.core.errors import UserFacingError
from nscmonitor.registry import forecasts as FR
from nscmonitor.scoring import forecast_ood as FO
from nscmonitor.scoring import well_sequence as WS
from nscmonitor.scoring.preprocess import tile_px_at
from nscmonitor.store import forecasts as F

log = logging.getLogger(__name__)
FORECAST_KEY = WS.FORECAST_KEY


class ForecastModelError(UserFacingError):
    """The file is not a usable well forecast model; the message says why."""


@dataclass(frozen=True)
class ForecastModel:
    path: Path
    meta: dict
    sha256: str
    session: object
    #: the forecast's own out-of-distribution score (None: the model has none, flag unavailable)
    ood: FO.FrameOOD | None = None

    @property
    def version(self) -> str:
        return str(self.meta["version"])

    def probs(self, seq: np.ndarray) -> np.ndarray:
        """Class probabilities at the last step of one well's ``T x D`` sequence."""
        logits = self.session.run(None, {"sequence": seq[None].astype(np.float32)})[0][0, -1]
        z = logits / float(self.meta.get("temperature", 1.0))
        e = np.exp(z - z.max())
        return e / e.sum()


def load_forecast_model(path: str | Path) -> ForecastModel:
    """Load and check the model's metadata against what this daemon computes; refuses (one
    line) a file from another feature set or normalisation rather than forecasting wrongly."""
    import onnxruntime as ort

    path = Path(path)
    try:
        meta = FR.read_meta(path)
    except FR.ForecastFileError as exc:
        raise ForecastModelError(str(exc)) from exc
    if meta.get("features") != WS.EXTRACTOR:
        raise ForecastModelError(f"{path}: trained on features {meta.get('features')!r}, this daemon computes "
                                 f"{WS.EXTRACTOR!r}")
    if meta.get("normalisation") not in WS.NORMALISATIONS or meta.get("hours_scale") != WS.HOURS_SCALE:
        raise ForecastModelError(f"{path}: normalisation {meta.get('normalisation')!r} / hours scale "
                                 f"{meta.get('hours_scale')!r} not what this daemon applies")
    if int(meta.get("input_width", -1)) != WS.feature_width(int(meta["n_features"]), meta["normalisation"]):
        raise ForecastModelError(f"{path}: input_width does not match its features and normalisation")
    try:
        ood = FO.FrameOOD.from_record(meta.get("ood"), (int(meta["n_features"]), WS.STORED_FEATURES))
    except ValueError as exc:
        raise ForecastModelError(f"{path}: {exc}") from exc
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return ForecastModel(path, meta, hashlib.sha256(path.read_bytes()).hexdigest(), sess, ood)


def batch_features(images: Sequence[tuple[int, np.ndarray, float | None]], meta: dict,
                   workers: int | None = None) -> list[tuple[int, str, np.ndarray]]:
    """(image_id, feature set, features) of a batch's images, in order. The features cost
    about 0.1 s per 704 x 520 frame on one core (0.7 s at 1408 x 1040), several times what the
    demo model's engine spends on it, and SciPy's filters release the GIL, so a batch's images
    are measured on ``workers`` threads (default: every CPU; the engine is idle while this
    stage runs)."""
    def one(image: tuple[int, np.ndarray, float | None]) -> tuple[int, str, np.ndarray]:
        i, px, um = image
        return i, WS.STORED, WS.frame_features(px, tile_px_for(meta, um))

    n = min(len(images), workers or os.cpu_count() or 1)
    if n <= 1:
        return [one(im) for im in images]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="forecast-features") as pool:
        return list(pool.map(one, images))


def tile_px_for(meta: dict, pixel_size_um: float | None) -> int:
    """The training tile size in this image's pixels (same physical size when both are known)."""
    return tile_px_at(int(meta.get("tile_px") or 128), meta.get("pixel_size_um"), pixel_size_um)


@dataclass(frozen=True)
class _Point:
    """One time point of a well as the forecast reads it: its frames' mean features, less the
    frames the forecast's own score flags (all of them when every frame there is flagged)."""

    h: float
    t: int
    values: np.ndarray
    n_images: int
    flagged: bool  # every frame at this time is unlike the forecast's training images
    n_ood: int  # frames at this time the score flags


def _frame_flags(model: ForecastModel, frames: Sequence[F.Frame]) -> dict[int, bool]:
    """image id -> flagged by the forecast's own score (empty without one). A row is scored on
    the features the score was fitted on; a row stored before the optics features were
    measured (the model's 27 only) is scored on those (``FrameOOD.scores`` takes the marginal).
    A stored row shorter than that (a damaged or foreign row) is flagged, not trusted."""
    if model.ood is None or not frames:
        return {}
    n = len(model.ood.mean)
    by_len: dict[int, list[F.Frame]] = defaultdict(list)
    flags: dict[int, bool] = {}
    for f in frames:
        d = min(len(f.values), n)
        if d < min(n, WS.MODEL_FEATURES):
            flags[f.image_id] = True
        else:
            by_len[d].append(f)
    for d, fs in by_len.items():
        x = np.array([f.values[:d] for f in fs], np.float64)
        flags.update(zip((f.image_id for f in fs), model.ood.flags(x).tolist()))
    return flags


def _point(t: int, fs: list[F.Frame], flags: dict[int, bool]) -> _Point:
    clean = [f for f in fs if not flags.get(f.image_id, False)]
    used = clean or fs
    return _Point(float(np.mean([f.elapsed_h for f in used])), t,
                  np.mean([WS.model_part(f.values) for f in used], axis=0),
                  len(used), not clean, len(fs) - len(clean))


def forecasts_for(model: ForecastModel, touched: Sequence[F.Frame], frames: Sequence[F.Frame],
                  whole_plates: frozenset[int] = frozenset()) -> list[F.Forecast]:
    """The forecasts the touched frames can change: their wells at their times and later; all
    wells of a plate whose induction scan changed, and of ``whole_plates`` (a plate this model
    has not forecast yet since it took over).

    Frames the forecast's own score flags (``forecast_ood``) are no data: a time point reads
    its other frames, and a time point whose frames are all flagged is read only by the
    forecast at that time, which is flagged (``ood``), so one bad scan does not steer the
    well's later forecasts. Induction frames are the reference and are always read: a well
    whose induction frames are all flagged has every forecast flagged, the plate reference is
    made of the other wells' induction frames, and when every well's are flagged, every
    forecast on the plate is flagged. ``n_ood`` counts the flagged frames up to each time."""
    norm = model.meta["normalisation"]
    flags = _frame_flags(model, frames)
    by_well: dict[int, dict[int, list[F.Frame]]] = defaultdict(lambda: defaultdict(list))
    for f in frames:
        if f.elapsed_h is not None:
            by_well[f.well_id][f.time_key].append(f)
    points = {w: sorted((_point(t, fs, flags) for t, fs in ts.items()), key=lambda p: p.h)
              for w, ts in by_well.items()}
    plate_of = {f.well_id: f.plate_id for f in frames}
    starts = {w: next((p for p in ps if WS.is_induction(p.h)), None) for w, ps in points.items()}
    refs, plate_flagged = {}, {}
    for plate in set(plate_of.values()):
        ind = [p for w, p in starts.items() if plate_of[w] == plate and p is not None]
        clean = [p.values for p in ind if not p.flagged]
        plate_flagged[plate] = bool(ind) and not clean
        refs[plate] = WS.plate_reference(clean or [p.values for p in ind]) if ind else None
    since: dict[int, float] = {}
    for f in touched:
        if f.elapsed_h is None:
            continue
        whole = WS.is_induction(f.elapsed_h) or f.plate_id in whole_plates
        wells = [w for w in points if plate_of[w] == f.plate_id] if whole else [f.well_id]
        for w in wells:
            since[w] = min(since.get(w, np.inf), -np.inf if whole else f.elapsed_h)
    out = []
    for w, first in since.items():
        ps, start, plate = points.get(w, []), starts.get(w), plate_of[w]
        for i, point in enumerate(ps):
            if point.h < first:
                continue
            read = [p for p in ps[:i] if not p.flagged or p is start] + [point]
            try:
                seq = WS.sequence([(p.h, p.values) for p in read], refs[plate],
                                  None if start is None else start.values, norm)
            except ValueError as exc:
                log.debug("well %s at %.1f h: no forecast (%s)", w, point.h, exc)
                continue
            ref = refs[plate]
            ood = None if model.ood is None else bool(point.flagged or (start is not None and start.flagged)
                                                        or plate_flagged[plate])
            out.append(F.Forecast(well_id=w, plate_id=plate, time_key=point.t, elapsed_h=point.h,
                                  model_version=model.version, model_sha256=model.sha256, normalisation=norm,
                                  classes=tuple(model.meta["classes"]), probs=tuple(model.probs(seq).tolist()),
                                  n_timepoints=len(read), n_images=sum(p.n_images for p in read),
                                  n_reference_wells=ref.n_wells if ref else None, ood=ood,
                                  n_ood=None if model.ood is None else sum(p.n_ood for p in ps[:i + 1])))
    return out


class ForecastStage:
    """Features of each stored image, then its wells' forecasts (both in the store)."""

    def __init__(self, model: ForecastModel, Session, *,  # noqa: N803 (the writer's sessionmaker)
                 source: Callable[[], Path | None] | None = None, workers: int | None = None) -> None:
        """``source``: the file that should serve now (``registry.forecasts.served``), asked
        before each batch, so a forecast installed by retraining or a rollback takes over
        between batches, as a promoted tile model does. ``workers``: threads measuring a
        batch's images (the ``threads`` setting; None: every CPU)."""
        self.model = model
        self.workers = workers
        self.Session = Session
        self.source = source
        self._refused: str | None = None  # the file (or pointer problem) last refused, told once
        #: plates forecast whole by the model serving since the last switch (None: no switch
        #: yet); a plate's first batch after a switch recomputes all its wells and times, so
        #: the dashboard's newest-model view of a running plate is complete, not patchy
        self._whole_done: set[int] | None = None

    def refresh(self) -> str | None:
        """Load the file ``source`` names when it is not the one serving; returns why it was
        refused (once per file: the current model keeps serving) or None."""
        if self.source is None:
            return None
        try:
            path = self.source()
        except UserFacingError as exc:
            return self._refuse(None, str(exc))
        if path is None or Path(path) == self.model.path:
            self._refused = None
            return None
        if str(path) == self._refused:
            return None
        try:
            model = load_forecast_model(path)
        except Exception as exc:  # any unloadable file: keep forecasting with the one that works
            return self._refuse(str(path), f"{exc}")
        geometry = [(m.meta.get("tile_px"), m.meta.get("pixel_size_um")) for m in (model, self.model)]
        if geometry[0] != geometry[1]:  # earlier frames' stored features were computed for the other
            return self._refuse(str(path), f"{model.version} reads tiles of {geometry[0][0]} px at "
                                f"{geometry[0][1]} µm/px, the serving model {geometry[1][0]} px at {geometry[1][1]} "
                                "µm/px: the features stored for earlier frames would not match")
        log.info("well forecast: %s (%s) replaces %s", model.version, path, self.model.version)
        self.model, self._refused, self._whole_done = model, None, set()
        return None

    def _refuse(self, key: str | None, why: str) -> str | None:
        key = key or why
        if key == self._refused:
            return None
        self._refused = key
        msg = f"well forecast model not switched, {self.model.version} keeps serving: {why}"
        log.error("%s", msg)
        return msg

    def after_batch(self, images: Sequence[tuple[int, np.ndarray, float | None]]) -> int:
        """(image_id, pixels, pixel size in µm) of the images just stored; returns forecasts written."""
        now = datetime.now(timezone.utc)
        feats = batch_features(images, self.model.meta, self.workers)
        if not feats:
            return 0
        F.save_features(self.Session, feats, now)
        done = self._whole_done
        pick = None if done is None else (lambda plates: plates - done)
        touched, frames = F.plate_frames(self.Session, [i for i, *_ in feats], WS.STORED_SETS, WS.BASELINE_MAX_H,
                                         whole_plates=pick)
        whole = frozenset() if done is None else frozenset({f.plate_id for f in touched} - done)
        n = F.store_forecasts(self.Session, forecasts_for(self.model, touched, frames, whole), now)
        if done is not None:
            done |= whole
        return n
