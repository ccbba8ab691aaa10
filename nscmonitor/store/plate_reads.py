"""One plate's reads for the dashboard: few round trips, column arrays instead of objects.

The experiments, plates, model versions and the queue come from ``store.reads`` (the one
read model, shared with the command line and the reports); here is only the plate view's
hot path, where one object per row would be too slow. It loads every readout of one plate
and model version in one indexed query (``ix_readouts_plate_time``) straight from the
driver, and parses each JSON column in one numpy call instead of one ``json.loads`` per
row; the first paint reads only the newest time point. Live updates ask only for what
changed since the last prediction id they saw. Everything here is read-only (the GUI opens
the database with ``query_only``) and returns frozen dataclasses or numpy arrays; Qt never
appears here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Engine, text

from nscmonitor.core.domain import PLATE_SHAPES


def _lists(values: list, k: int) -> np.ndarray:
    """N JSON lists of length k -> N x k float32; empty lists (a readout without a scored
    image) become NaN rows. The fast path strips the brackets and lets numpy's C parser read
    all numbers at once (about twice as fast as json.loads on 46,000 rows)."""
    n = len(values)
    if n == 0:
        return np.zeros((0, k), np.float32)
    if k and all(isinstance(v, str) for v in values):
        flat = ",".join(values).replace("[", "").replace("]", "")
        try:
            arr = np.fromstring(flat, dtype=np.float64, sep=",")
        except ValueError:
            arr = np.zeros(0)
        if arr.size == n * k:
            return arr.reshape(n, k).astype(np.float32)
    out = np.full((n, k), np.nan, np.float32)
    for i, v in enumerate(values):
        lst = json.loads(v) if isinstance(v, str) else v
        if lst and len(lst) == k:
            out[i] = [np.nan if x is None else x for x in lst]
    return out


def _fetch(engine: Engine, sql: str, params: dict) -> list:
    """Rows as plain tuples. On SQLite straight from the driver (named parameters work there
    as-is): SQLAlchemy's row processing costs a quarter of a second on a 384-well plate."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as c:
            cur = c.connection.dbapi_connection.cursor()
            try:
                return cur.execute(sql, params).fetchall()
            finally:
                cur.close()
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(text(sql), params).all()]


# --- one plate ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class WellRow:
    id: int
    name: str
    row: int
    col: int
    condition: str | None


def plate_wells(engine: Engine, plate_id: int) -> list[WellRow]:
    with engine.connect() as c:
        rows = c.execute(text("SELECT id, name, row, col, condition FROM wells WHERE plate_id = :p ORDER BY row, col"),
                         {"p": plate_id}).all()
    return [WellRow(*r) for r in rows]


def plate_format_for(declared: int, wells: Iterable[WellRow]) -> int:
    """The declared format, or the smallest standard plate that holds every well seen (a
    folder configured as 96 that delivers P24 is really a 384-well plate)."""
    rows = max((w.row for w in wells), default=0) + 1
    cols = max((w.col for w in wells), default=0) + 1
    for fmt, (r, c) in sorted(PLATE_SHAPES.items()):
        if fmt >= declared and r >= rows and c >= cols:
            return fmt
    return 1536


@dataclass(frozen=True)
class VersionUse:
    version: str
    n_readouts: int


def plate_versions(engine: Engine, plate_id: int) -> list[VersionUse]:
    with engine.connect() as c:
        rows = c.execute(text("SELECT model_version, COUNT(*) FROM well_readouts WHERE plate_id = :p"
                              " GROUP BY model_version ORDER BY MAX(id)"), {"p": plate_id}).all()
    return [VersionUse(v, n) for v, n in rows]


# --- readouts as columns ------------------------------------------------------------------------
@dataclass(frozen=True)
class ReadoutColumns:
    well_id: np.ndarray
    time_key: np.ndarray
    elapsed_h: np.ndarray
    classes: tuple[str, ...]
    prob_mean: np.ndarray
    prob_sd: np.ndarray
    fraction: np.ndarray
    n_images: np.ndarray
    n_tiles: np.ndarray
    n_qc_failed: np.ndarray
    confidence: np.ndarray
    n_ood: np.ndarray  # images flagged out of distribution, NaN where the model gives no flag


_RO_COLS = ("SELECT well_id, time_key, elapsed_h, prob_mean, prob_sd, fraction, n_images, n_tiles, n_qc_failed,"
            " confidence, n_ood FROM well_readouts")


def _classes(engine: Engine, version: str, plate_id: int | None = None) -> tuple[str, ...]:
    """A version's class list, read once: repeating it on 46,000 rows doubled the transfer."""
    q = "SELECT classes FROM well_readouts WHERE model_version = :v AND CAST(classes AS TEXT) != '[]'"  # json has no !=
    params: dict = {"v": version}
    if plate_id is not None:
        q += " AND plate_id = :p"
        params["p"] = int(plate_id)
    rows = _fetch(engine, q + " LIMIT 1", params)
    if not rows:
        return ()
    v = rows[0][0]
    return tuple(json.loads(v) if isinstance(v, str) else v)


def _columns(rows: list, classes: tuple[str, ...]) -> ReadoutColumns:
    k = len(classes)
    cols = list(zip(*rows)) if rows else [()] * 11

    def num(i: int, dtype: type) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in cols[i]], dtype=dtype)

    return ReadoutColumns(
        well_id=np.array(cols[0], np.int64), time_key=np.array(cols[1], np.int64), elapsed_h=num(2, np.float64),
        classes=classes, prob_mean=_lists(list(cols[3]), k), prob_sd=_lists(list(cols[4]), k),
        fraction=_lists(list(cols[5]), k), n_images=np.array(cols[6], np.int32), n_tiles=np.array(cols[7], np.int32),
        n_qc_failed=np.array(cols[8], np.int32), confidence=num(9, np.float32), n_ood=num(10, np.float32))


def plate_readouts(engine: Engine, plate_id: int, version: str, *, latest_only: bool = False) -> ReadoutColumns:
    """All readouts of a plate for one model version; ``latest_only``: just the newest time
    point (384 rows instead of 46,000), which is what the first paint needs."""
    q = _RO_COLS + " WHERE plate_id = :p AND model_version = :v"
    if latest_only:
        q += " AND time_key = (SELECT MAX(time_key) FROM well_readouts WHERE plate_id = :p AND model_version = :v)"
    return _columns(_fetch(engine, q, {"p": int(plate_id), "v": version}), _classes(engine, version, plate_id))


def readouts_for(engine: Engine, plate_id: int, version: str, pairs: Iterable[tuple[int, int]]) -> ReadoutColumns:
    """Readouts of the given (well id, time key) pairs: what a live update re-reads. One query
    per time key (a new scan is one key for the whole plate), then the wanted wells."""
    wanted = set(pairs)
    rows: list = []
    q = _RO_COLS + " WHERE plate_id = :p AND model_version = :v AND time_key = :t"
    for t in sorted({t for _, t in wanted}):
        rows.extend(r for r in _fetch(engine, q, {"p": int(plate_id), "v": version, "t": int(t)})
                    if (r[0], r[1]) in wanted)
    return _columns(rows, _classes(engine, version, plate_id) if rows else ())


# --- live polling ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Marks:
    """High-water marks: the dashboard compares them every poll and reads more only when one moved."""

    prediction_id: int
    image_id: int
    image_updated: str
    event_id: int
    heartbeat: str


def marks(engine: Engine) -> Marks:
    with engine.connect() as c:
        r = c.execute(text(
            "SELECT (SELECT COALESCE(MAX(id), 0) FROM predictions), (SELECT COALESCE(MAX(id), 0) FROM images),"
            # times as text on both databases (PostgreSQL will not COALESCE a timestamp with '')
            " (SELECT COALESCE(CAST(MAX(updated_at) AS TEXT), '') FROM images),"
            " (SELECT COALESCE(MAX(id), 0) FROM events),"
            " (SELECT COALESCE(CAST(MAX(heartbeat_at) AS TEXT), '') FROM daemon_status)")).one()
    return Marks(int(r[0]), int(r[1]), str(r[2]), int(r[3]), str(r[4]))


def touched_since(engine: Engine, plate_id: int, version: str, after_prediction_id: int,
                  after_image_updated: str | None = None) -> set[tuple[int, int]]:
    """(well id, time key) of the plate whose readout may have changed: new predictions of the
    version, and images whose state changed since (a QC failure changes n_qc_failed without
    adding a prediction)."""
    with engine.connect() as c:
        pairs = {(w, t) for w, t in c.execute(text(
            "SELECT DISTINCT i.well_id, i.time_key FROM predictions p JOIN images i ON i.id = p.image_id"
            " JOIN wells w ON w.id = i.well_id WHERE p.id > :a AND p.model_version = :v AND w.plate_id = :p"
            " AND i.time_key IS NOT NULL"), {"a": after_prediction_id, "v": version, "p": plate_id})}
        if after_image_updated:
            pairs |= {(w, t) for w, t in c.execute(text(
                "SELECT DISTINCT i.well_id, i.time_key FROM images i JOIN wells w ON w.id = i.well_id"
                " WHERE i.updated_at > :u AND w.plate_id = :p AND i.time_key IS NOT NULL"),
                {"u": after_image_updated, "p": plate_id})}
    return pairs


# --- one well at one time: the image viewer -----------------------------------------------------
@dataclass(frozen=True)
class WellImage:
    image_id: int
    path: str
    field: int | None
    channel: str | None
    status: str
    error: str | None
    elapsed_h: float | None
    width: int | None
    height: int | None
    qc: dict
    qc_passed: bool | None
    classes: tuple[str, ...]
    prob_mean: tuple[float, ...]
    n_tiles: int
    confidence: float | None
    tiles: bytes | None
    engine: str | None = None  # backend and precision that scored it, e.g. openvino-int8


def well_images(engine: Engine, well_id: int, time_key: int, version: str | None) -> list[WellImage]:
    with engine.connect() as c:
        rows = c.execute(text(
            "SELECT i.id, i.path, i.field, i.channel, i.status, i.error, i.elapsed_h, i.width, i.height, i.qc,"
            " i.qc_passed, p.classes, p.prob_mean, p.n_tiles, p.confidence, p.tiles, p.engine FROM images i"
            " LEFT JOIN predictions p ON p.image_id = i.id AND p.model_version = :v"
            " WHERE i.well_id = :w AND i.time_key = :t ORDER BY i.field, i.id"),
            {"w": int(well_id), "t": int(time_key), "v": version or ""}).all()
    out = []
    for r in rows:
        def js(v: object) -> list | dict:
            return json.loads(v) if isinstance(v, str) else (v or [])
        out.append(WellImage(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], dict(js(r[9]) or {}),
                             None if r[10] is None else bool(r[10]), tuple(js(r[11])), tuple(js(r[12])),
                             int(r[13] or 0), r[14], r[15], r[16]))
    return out
