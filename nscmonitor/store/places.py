"""Experiments, plates and wells: found or created without racing another daemon.

Two daemons watching folders of the same experiment and plate on one PostgreSQL database may
meet the same new plate or well at the same moment. A plain "select, insert if missing" lets
both insert, and the second hits the unique constraint and loses its batch. Here the row is
inserted with ``ON CONFLICT DO NOTHING`` (PostgreSQL and SQLite both have it): the second
insert waits for the first transaction, then does nothing, and the ``SELECT`` after it sees
the committed row. Callers create the rows of a batch in key order, so two daemons never wait
on each other's rows in opposite orders."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Table, select, tuple_
from sqlalchemy.orm import Session

from nscmonitor.core.domain import ImageKey
from nscmonitor.store import models as m
from nscmonitor.store.times import utcnow


def _insert_for(s: Session):
    """The dialect's ``insert`` with ``ON CONFLICT`` (PostgreSQL and SQLite both have it)."""
    dialect = s.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise ValueError(f"unsupported database {dialect!r}: nscmonitor stores in SQLite or PostgreSQL")
    return insert


def insert_missing(s: Session, table: Table, keys: tuple[str, ...], values: dict[str, Any] | list[dict]) -> None:
    """Insert the row (or rows, in their order) unless one with the same ``keys`` (a unique
    constraint) exists or is being inserted by another transaction, which is waited for.

    The rows go as parameters of one statement (SQLAlchemy batches them into multi-row
    inserts), not rendered into it: the statement is then compiled once and cached, where a
    ``values(rows)`` statement was compiled again for every batch, and the driver parsed a
    new text each time (a large share of a small batch's cost, on PostgreSQL most)."""
    rows = values if isinstance(values, list) else [values]
    if rows:
        s.execute(_insert_for(s)(table).on_conflict_do_nothing(index_elements=list(keys)), rows)


def upsert(s: Session, table: Table, keys: tuple[str, ...], rows: list[dict[str, Any]],
           replace: tuple[str, ...]) -> None:
    """Insert ``rows``, or where a row with the same ``keys`` exists, replace its ``replace``
    columns with the new row's (rows as parameters, as in ``insert_missing``)."""
    if rows:
        stmt = _insert_for(s)(table)
        s.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_={c: stmt.excluded[c] for c in replace}),
                  rows)


def ensure_experiment(s: Session, name: str, *, watch_path: str | None = None,
                      induction_time: datetime | None = None) -> int:
    """The experiment's id; its watch path and induction time are updated when given."""
    insert_missing(s, m.Experiment.__table__, ("name",),
                   {"name": name, "watch_path": watch_path, "induction_time": induction_time, "created_at": utcnow()})
    exp = s.scalar(select(m.Experiment).where(m.Experiment.name == name))
    if watch_path and exp.watch_path != watch_path:
        exp.watch_path = watch_path
    if induction_time and exp.induction_time != induction_time:
        exp.induction_time = induction_time
    return exp.id


def ensure_well(s: Session, experiment_id: int, plate: str, plate_format: int, key: ImageKey,
                condition: str | None, attributes: dict[str, str] | None = None) -> tuple[int, int]:
    """(plate id, well id), both created when missing; the plate map's condition and
    attributes for the well replace the stored ones when given and different."""
    wells = ensure_wells(s, [(experiment_id, plate, plate_format, key, condition, attributes)])
    return wells[(experiment_id, plate, key.well)]


def ensure_wells(s: Session, wells: list[tuple[int, str, int, ImageKey, str | None, dict | None]]
                 ) -> dict[tuple[int, str, str], tuple[int, int]]:
    """``ensure_well`` for many wells ((experiment id, plate, plate format, key, condition,
    attributes), in key order) with four statements: plates inserted, read, wells inserted,
    read; then the changed conditions and attributes. Returns (experiment id, plate, well) ->
    (plate id, well id)."""
    plates = {}
    for exp, plate, fmt, _, _, _ in wells:
        plates.setdefault((exp, plate), fmt)
    insert_missing(s, m.Plate.__table__, ("experiment_id", "name"),
                   [{"experiment_id": e, "name": p, "plate_format": f} for (e, p), f in plates.items()])
    plate_ids = {(r.experiment_id, r.name): r.id for r in s.execute(
        select(m.Plate.id, m.Plate.experiment_id, m.Plate.name)
        .where(tuple_(m.Plate.experiment_id, m.Plate.name).in_(list(plates))))}
    rows = [{"plate_id": plate_ids[(exp, plate)], "name": key.well, "row": key.row, "col": key.col,
             "condition": cond, "attributes": attrs or None} for exp, plate, _, key, cond, attrs in wells]
    insert_missing(s, m.Well.__table__, ("plate_id", "name"), rows)
    stored = {(w.plate_id, w.name): w for w in s.scalars(
        select(m.Well).where(tuple_(m.Well.plate_id, m.Well.name).in_([(r["plate_id"], r["name"]) for r in rows])))}
    out = {}
    for exp, plate, _, key, cond, attrs in wells:
        w = stored[(plate_ids[(exp, plate)], key.well)]
        if cond and w.condition != cond:
            w.condition = cond
        if attrs and w.attributes != attrs:
            w.attributes = attrs
        out[(exp, plate, key.well)] = (w.plate_id, w.id)
    return out
