"""What the dashboard shows, read from the store without Qt: the overview (experiments,
daemon status, model versions), a plate with its readouts, what changed since the last poll,
and a well's images with the model geometry for their tile overlay.

The window runs these in its worker threads (``gui.workers.Reader``) and only paints what
they return, so the logic is tested against a real database without a window.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nscmonitor.gui.state.readouts import PlateCube, ReadoutRows, Well, build_cube
from nscmonitor.report.calls import RuleInUse, rule_in_use
from nscmonitor.store import plate_reads as db
from nscmonitor.store import reads
from nscmonitor.store import registry
from nscmonitor.store.forecasts import plate_forecasts
from nscmonitor.store.reads import DaemonInfo, ImageError

log = logging.getLogger(__name__)

FULL_RELOAD_PAIRS = 2000  # past this many changed (well, time) pairs one plate query is cheaper
ENGINE_EVENTS = ("engine_build", "engine_build_failed", "engine_swapped", "engine_kept")


@dataclass(frozen=True)
class StatusSnapshot:
    daemons: list[DaemonInfo]
    queue: dict[str, int]
    errors: list[ImageError]
    scored_5min: int
    at: datetime
    #: the daemon's last word on its engine build (building, ready, swapped, or why fp32 serves)
    engine_note: str | None = None
    engine_note_level: str = "info"
    #: ``nscmonitor status``'s warnings about what is being scored (most of the newest images
    #: unlike the model's training data, several channels scored together) and the daemon's
    #: last word on a disk running low, in its words
    warnings: tuple[str, ...] = ()


def read_status(engine: Any) -> StatusSnapshot:
    """``engine``: the dashboard's read-only SQLAlchemy engine."""
    from nscmonitor.ops.disk_notice import last_warning
    from nscmonitor.ops.health import scoring_warnings, slow_rescan_warnings
    from nscmonitor.store.reads import Repo

    repo = Repo(engine)
    disk = last_warning(repo)
    note = next((e for e in repo.events(200) if e.kind in ENGINE_EVENTS), None)
    daemons = repo.daemons(3)
    live = daemons[0].watched if daemons and daemons[0].state != "stopped" else []
    return StatusSnapshot(daemons, repo.queue_counts(), repo.errors(30), repo.scored_since(300),
                          datetime.now(timezone.utc), note.message if note else None,
                          note.level if note else "info",
                          tuple(([disk] if disk else []) + slow_rescan_warnings(live) + scoring_warnings(repo)))


@dataclass(frozen=True)
class Overview:
    experiments: list[reads.ExperimentOverview]
    status: StatusSnapshot
    versions: list[registry.ModelInfo]
    marks: db.Marks
    #: model files the daemon served without the registry (state ``registry.SERVED_FILE``)
    served: list[registry.ModelInfo] = field(default_factory=list)


def read_overview(engine: Any) -> Overview:
    return Overview(reads.overview(engine), read_status(engine), registry.model_versions(engine), db.marks(engine),
                    registry.served_files(engine))


@dataclass(frozen=True)
class PlateLoad:
    plate: reads.PlateInfo
    plate_format: int
    wells: list[Well]
    versions: list[db.VersionUse]
    version: str | None
    cube: PlateCube
    marks: db.Marks
    seconds: float
    partial: bool = False  # only the newest time point: the full load follows
    #: (well name, time key) -> the time-aware well model's forecast (empty: none stored)
    forecasts: dict = field(default_factory=dict)
    #: the call rule of the version shown (its metadata), or the default saying why
    call_rule: RuleInUse = field(default_factory=lambda: rule_in_use(None, None))


def call_rule_for(engine: Any, version: str | None) -> RuleInUse:
    """The call rule model ``version`` carries, registered or served from a file (the default,
    saying so, for a version the store does not know), so the dashboard calls wells as the
    report does."""
    return rule_in_use(registry.version_meta(engine, version) if version else None, version)


def plate_wells(engine: Any, plate_id: int) -> list[Well]:
    return [Well(w.id, w.name, w.row, w.col, w.condition) for w in db.plate_wells(engine, plate_id)]


def readout_rows(c: db.ReadoutColumns) -> ReadoutRows:
    return ReadoutRows(c.well_id, c.time_key, c.elapsed_h, c.classes, c.prob_mean, c.prob_sd, c.fraction, c.n_images,
                       c.n_tiles, c.n_qc_failed, c.confidence, c.n_ood)


def load_plate(engine: Any, plate: reads.PlateInfo, preferred: str | None, wanted: str | None = None, *,
               latest_only: bool = False) -> PlateLoad:
    """Everything the plate view needs in one go: wells, the model version to show (the one
    asked for, else the daemon's, else the newest with readouts) and its readouts: all of
    them, or with ``latest_only`` just the newest time point for a fast first paint."""
    t0 = time.perf_counter()
    marks = db.marks(engine)
    rows = db.plate_wells(engine, plate.id)
    wells = [Well(w.id, w.name, w.row, w.col, w.condition) for w in rows]
    versions = db.plate_versions(engine, plate.id)
    names = [v.version for v in versions]
    version = wanted if wanted in names else preferred if preferred in names else (names[-1] if names else None)
    cols = db.plate_readouts(engine, plate.id, version, latest_only=latest_only) if version else None
    fmt = db.plate_format_for(plate.plate_format, rows)
    cube = build_cube(wells, fmt, readout_rows(cols) if cols is not None else ReadoutRows.empty())
    return PlateLoad(plate, fmt, wells, versions, version, cube, marks, time.perf_counter() - t0,
                     partial=latest_only and version is not None, forecasts=plate_forecasts(engine, plate.id),
                     call_rule=call_rule_for(engine, version))


@dataclass(frozen=True)
class PollResult:
    marks: db.Marks
    rows: ReadoutRows | None
    wells: list[Well] | None
    full: PlateLoad | None
    overview: Overview | None
    forecasts: dict | None = None  # the plate's forecasts when anything moved on it


def poll(engine: Any, plate: reads.PlateInfo | None, version: str | None, last: db.Marks | None,
         preferred: str | None) -> PollResult:
    """What changed since ``last``: the readouts of (well, time) pairs with new predictions or
    changed images, new wells, and the overview and status when anything moved."""
    marks = db.marks(engine)
    if last is not None and marks == last:
        return PollResult(marks, None, None, None, None)
    overview = read_overview(engine)
    if plate is None or last is None:
        return PollResult(marks, None, None, None, overview)
    if version is None:
        if marks.prediction_id != last.prediction_id:
            return PollResult(marks, None, None, load_plate(engine, plate, preferred), overview)
        return PollResult(marks, None, None, None, overview)
    pairs = db.touched_since(engine, plate.id, version, last.prediction_id,
                             last.image_updated if marks.image_updated != last.image_updated else None)
    if len(pairs) > FULL_RELOAD_PAIRS:
        return PollResult(marks, None, None, load_plate(engine, plate, preferred, version), overview)
    wells = plate_wells(engine, plate.id) if marks.image_id != last.image_id else None
    rows = readout_rows(db.readouts_for(engine, plate.id, version, pairs)) if pairs else None
    return PollResult(marks, rows, wells, None, overview, plate_forecasts(engine, plate.id))


@dataclass(frozen=True)
class WellImages:
    images: list[db.WellImage]
    model_meta: dict | None  # input_size and pixel_size_um: the exact tile overlay geometry
    model_path: str | None


class ModelMetaCache:
    """The model metadata (input size, pixel size) each version's tile overlay needs, read
    once per version: a version names fixed content, so its metadata never changes while the
    window is open. Owned by one window; its worker threads only add entries."""

    def __init__(self, engine: Any, settings: Any) -> None:
        self.engine, self.settings = engine, settings
        self._known: dict[str, tuple[dict | None, str | None]] = {}

    def get(self, version: str | None) -> tuple[dict | None, str | None]:
        """The registry's row when the version is registered, else what the daemon kept of the
        model file it served as that version, else the configured model file when it is that
        version; (None, None) when none says."""
        if version is None:
            return None, None
        if version not in self._known:
            self._known[version] = self._read(version)
        return self._known[version]

    def _read(self, version: str) -> tuple[dict | None, str | None]:
        meta = registry.version_meta(self.engine, version)
        path = next((v.path for v in registry.model_versions(self.engine) if v.version == version), None)
        if path is None and meta is not None:
            served = registry.served_file(self.engine, version)
            path = served.path if served is not None else None
        model = getattr(self.settings, "model", None) if self.settings is not None else None
        if meta is None and model:
            try:
                from nscmonitor.engines.metadata import read_onnx_metadata
                from nscmonitor.scoring.serving import file_version

                if file_version(Path(model)) == version:
                    m = read_onnx_metadata(model)
                    meta, path = {"input_size": m.input_size, "pixel_size_um": m.pixel_size_um}, str(model)
            except Exception as exc:  # an unreadable model file only costs the exact overlay geometry
                log.info("model metadata for %s unavailable: %s", version, exc)
        return meta, path

    def well_images(self, well_id: int, time_key: int, version: str | None) -> WellImages:
        meta, path = self.get(version)
        return WellImages(db.well_images(self.engine, well_id, time_key, version), meta, path)


@dataclass(frozen=True)
class DaemonLine:
    alive: bool
    text: str
    watched: list[str]  # the folders a live daemon watches (empty when none is alive)


def daemon_line(status: StatusSnapshot, now: datetime) -> DaemonLine:
    """The status bar's verdict on the newest daemon and the folders it watches, which the
    experiment browser needs to tell acquiring from stopped."""
    from nscmonitor.gui.state.status import daemon_alive

    d = status.daemons[0] if status.daemons else None
    if d is None or not daemon_alive(d.heartbeat_at, d.state, now):
        return DaemonLine(False, "● no daemon running", [])
    watched = [w.get("path", "") if isinstance(w, dict) else str(w) for w in d.watched]
    return DaemonLine(True, f"● daemon running — {d.engine}, {d.model_version}", watched)


def export_counts(overview: Overview | None, load: PlateLoad | None, experiment: str | None,
                  version: str | None) -> dict[str, int]:
    """Experiment name -> how many rows an export would hold, for the export dialog's choice
    and its progress bar: images scored per experiment, and for the experiment on screen its
    readouts of the version shown."""
    counts = {e.name: e.n_done for e in overview.experiments} if overview is not None else {}
    if load is not None and experiment is not None:
        counts[experiment] = sum(v.n_readouts for v in load.versions if v.version == version)
    return counts
