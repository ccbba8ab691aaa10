"""``nscmonitor db copy``: move a lab's SQLite history into PostgreSQL.

Tables are copied parents first (``Base.metadata.sorted_tables``), in batches that each commit
on their own, with the source's primary keys kept, so every foreign key stays valid and a
copy that stops (killed, network cut) is resumed by running it again: a table continues after
the highest key the target already holds (the target always holds a prefix of the source,
because batches are ordered by key and committed whole). At the end the PostgreSQL sequences
are moved past the copied keys and each table is verified by its row count and a checksum of
its rows' values in key order, computed on both sides from the same normalised form (times in
UTC, JSON with sorted keys, floats by ``repr``).

Both ends hold their single-instance lock while copying: a daemon still writing the source
(or already writing the target) would make the copy a moving target, so the copy refuses and
says which daemon to stop.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, Table, func, insert, select, text

from nscmonitor.core.errors import UserFacingError
from nscmonitor.store import models as m
from nscmonitor.store.db import current_revision, open_engine, masked, open_readonly, sqlite_path

log = logging.getLogger(__name__)


class CopyError(UserFacingError):
    pass


@dataclass(frozen=True)
class TableCheck:
    table: str
    source_rows: int
    target_rows: int
    copied_now: int
    source_sum: str
    target_sum: str

    @property
    def ok(self) -> bool:
        return self.source_rows == self.target_rows and self.source_sum == self.target_sum


def tables() -> list[Table]:
    """Every table of the schema, each after the tables it references."""
    return list(m.Base.metadata.sorted_tables)


def _key(t: Table):
    (pk,) = t.primary_key.columns  # every table has a one-column key (checked by the tests)
    return pk


def normalise(v: Any) -> Any:  # any column value
    """One form for a value read from either database: SQLite hands back naive UTC datetimes,
    PostgreSQL aware ones; JSON objects compare with sorted keys."""
    if isinstance(v, datetime):
        return (v if v.tzinfo else v.replace(tzinfo=timezone.utc)).astimezone(timezone.utc).isoformat()
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (bytes, memoryview)):
        return bytes(v).hex()
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return v


def _aware(row: dict) -> dict:
    """Naive datetimes (SQLite's) are UTC; PostgreSQL would read them in the session's time zone."""
    return {k: (v.replace(tzinfo=timezone.utc) if isinstance(v, datetime) and v.tzinfo is None else v)
            for k, v in row.items()}


def _rows(engine: Engine, t: Table, batch: int) -> Iterator[tuple]:
    key = _key(t)
    with engine.connect() as c:
        result = c.execution_options(stream_results=True, yield_per=batch).execute(select(t).order_by(key))
        yield from result


def checksum(engine: Engine, t: Table, batch: int = 1000) -> tuple[int, str]:
    """Row count and SHA-256 of the normalised rows in key order (string keys sorted here, not
    by the database: SQLite and PostgreSQL collate text differently)."""
    h = hashlib.sha256()
    key = _key(t)
    rows = _rows(engine, t, batch)
    if key.type.python_type is not int:
        at = list(t.columns.keys()).index(key.name)
        rows = iter(sorted(rows, key=lambda r: r[at]))
    n = 0
    for r in rows:
        h.update(json.dumps([normalise(v) for v in r], default=str).encode())
        h.update(b"\n")
        n += 1
    return n, h.hexdigest()


def _copy_table(src: Engine, dst: Engine, t: Table, batch: int, advance: Callable[[int], None]) -> int:
    key = _key(t)
    integer_key = key.type.python_type is int
    with dst.connect() as c:
        if integer_key:
            done_to = c.execute(select(func.max(key))).scalar()
            have: set = set()
        else:
            done_to = None
            have = set(c.execute(select(key)).scalars())
    q = select(t).order_by(key)
    if done_to is not None:
        q = q.where(key > done_to)
    copied = 0
    with src.connect() as sc:
        result = sc.execution_options(stream_results=True, yield_per=batch).execute(q)
        for part in result.partitions(batch):
            rows = [_aware(dict(r._mapping)) for r in part if integer_key or r._mapping[key.name] not in have]
            if rows:
                with dst.begin() as dc:
                    dc.execute(insert(t), rows)
            copied += len(rows)
            advance(len(part))
    return copied


def _reset_sequences(dst: Engine) -> None:
    """Keys were copied explicitly, so each sequence still stands at 1: move it past the copy."""
    with dst.begin() as c:
        for t in tables():
            key = _key(t)
            if key.type.python_type is not int:
                continue
            seq = c.execute(text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": t.name, "c": key.name}).scalar()
            if seq is None:
                continue
            top = c.execute(select(func.max(key))).scalar()
            c.execute(text("SELECT setval(:s, :v, :called)"), {"s": seq, "v": top or 1, "called": top is not None})


def _check_kinds(src_url: str, dst_url: str) -> None:
    src = sqlite_path(src_url)
    if src is None:
        raise CopyError(f"db copy: the source must be a SQLite database, got {masked(src_url)}")
    if not src.is_file():
        raise CopyError(f"db copy: the source {src} does not exist")
    if not dst_url.startswith("postgresql"):
        raise CopyError(f"db copy: the target must be a PostgreSQL database, got {masked(dst_url)}")


def _check_ends(src_url: str, dst_url: str) -> tuple[Engine, Engine]:
    src = open_readonly(src_url)  # refuses a missing file or one not at this version's schema
    dst = open_engine(dst_url)
    want, have = current_revision(src), current_revision(dst)
    if have != want:
        raise CopyError(f"db copy: the target {masked(dst_url)} is at schema revision {have or '(none: empty)'} but "
                        f"the source is at {want}; run 'nscmonitor db upgrade --db TARGET' as the owner role first")
    with dst.connect() as c:
        for t in tables():
            if c.execute(select(func.count()).select_from(t)).scalar() and not _is_prefix(src, dst, t):
                raise CopyError(f"db copy: the target's table {t.name} holds rows that are not the source's; "
                                "copy only into a new database (or one an earlier copy of this source filled)")
    return src, dst


def _is_prefix(src: Engine, dst: Engine, t: Table) -> bool:
    """The target's first and last rows are the source's rows of the same keys (what an earlier,
    interrupted copy of this source leaves), not another lab's data."""
    key = _key(t)
    with dst.connect() as c:
        ends = [c.execute(select(t).order_by(key).limit(1)).first(),
                c.execute(select(t).order_by(key.desc()).limit(1)).first()]
    with src.connect() as c:
        for r in ends:
            mine = c.execute(select(t).where(key == r._mapping[key.name])).first()
            if mine is None or [normalise(v) for v in mine] != [normalise(v) for v in r]:
                return False
    return True


def copy_database(src_url: str, dst_url: str, *, batch: int = 1000, progress: bool = True) -> list[TableCheck]:
    """Copy, then verify every table; raises ``CopyError`` naming the tables that differ."""
    from nscmonitor.store.instance import acquire

    if batch < 1:
        raise CopyError("db copy: --batch must be at least 1")
    _check_kinds(src_url, dst_url)
    src_lock = acquire(src_url)  # no daemon may write the source during the copy
    try:
        dst_lock = acquire(dst_url)
        try:
            src, dst = _check_ends(src_url, dst_url)
            checks = _copy_all(src, dst, batch, progress)
        finally:
            dst_lock.release()
    finally:
        src_lock.release()
    bad = [c for c in checks if not c.ok]
    if bad:
        raise CopyError("db copy: verification failed for " + ", ".join(
            f"{c.table} ({c.source_rows} rows in the source, {c.target_rows} in the target"
            f"{'' if c.source_rows != c.target_rows else ', checksums differ'})" for c in bad))
    return checks


def _copy_all(src: Engine, dst: Engine, batch: int, progress: bool) -> list[TableCheck]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    ts = tables()
    with src.connect() as c:
        totals = {t.name: c.execute(select(func.count()).select_from(t)).scalar() for t in ts}
    copied: dict[str, int] = {}
    cols = (TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*cols, disable=not progress, transient=False) as bar:
        for t in ts:
            task = bar.add_task(t.name, total=totals[t.name])
            copied[t.name] = _copy_table(src, dst, t, batch, lambda n, task=task: bar.advance(task, n))
            bar.update(task, completed=totals[t.name])
    _reset_sequences(dst)
    checks = []
    for t in ts:
        (ns, hs), (nd, hd) = checksum(src, t, batch), checksum(dst, t, batch)
        checks.append(TableCheck(t.name, ns, nd, copied[t.name], hs, hd))
        log.info("db copy: %s %d rows (%d copied now), %s", t.name, nd, copied[t.name],
                 "verified" if ns == nd and hs == hd else "DIFFERS")
    return checks
