"""One daemon per database.

Two daemons on one database claim the same images, score them twice and trip over each
other's rows, so ``nscmonitor run`` takes a lock that the operating system releases when the
process ends, however it ends: a daemon killed with SIGKILL or a power cut never leaves a
lock that blocks the restart, and there is no heartbeat to expire or PID to guess about.

* SQLite: an exclusive lock on ``<database>.daemon.lock`` beside the database file
  (``flock`` on POSIX, ``msvcrt.locking`` on Windows). The file holds the owner's host, PID and
  start time, for the message the second daemon prints; its content is informative only.
* PostgreSQL: several daemons may share one database (they claim from one queue with leases,
  ``store.leases``), so ``nscmonitor run`` takes the advisory lock *shared*
  (``pg_try_advisory_lock_shared``, ``acquire_daemon``) on a connection kept open for its
  lifetime; ``release`` gives it back on that connection, and the server drops it when the
  connection dies otherwise. What needs the database to itself
  (``db copy``) takes it exclusively (``acquire``) and is refused while any daemon runs. The
  owner named in the message is the newest running daemon in ``daemon_status``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nscmonitor.core.errors import UserFacingError

#: 64-bit key of the PostgreSQL advisory lock ("nscmonit" in ASCII)
PG_LOCK_KEY = 0x6E73636D6F6E6974
#: byte locked on Windows, past the owner text, so the text stays readable (Windows locks are mandatory)
_WIN_LOCK_OFFSET = 1 << 20


log = logging.getLogger(__name__)


class AlreadyRunning(UserFacingError):
    pass


@dataclass
class InstanceLock:
    """Held for the daemon's lifetime; ``release`` is for tidiness, the OS releases it anyway."""

    kind: str
    handle: Any

    def release(self) -> None:
        if self.handle is None:
            return
        if self.kind == "file":
            _unlock_file(self.handle)
            self.handle.close()
        else:
            _unlock_pg(self.handle)
        self.handle = None


def _unlock_pg(conn: Any) -> None:
    """Give the advisory lock back on its own session before closing it: the server drops a
    closed session's locks only once its backend has noticed and exited, so a process that takes
    the lock right after (a restarted daemon, ``db copy`` after the daemons stopped) could be
    refused by a daemon that is already gone (seen in CI under load)."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    try:
        conn.execute(text("SELECT pg_advisory_unlock_all()"))
        conn.commit()
    except SQLAlchemyError as exc:  # a dead connection: the server drops its locks when it notices
        log.info("could not release the PostgreSQL advisory lock before closing its connection: %s", exc)
    finally:
        conn.close()


def lock_path(db_file: Path) -> Path:
    return db_file.with_name(db_file.name + ".daemon.lock")


def owner_text() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _describe(owner: dict | None) -> str:
    if not owner:
        return "another nscmonitor daemon (its host and PID are not recorded yet)"
    return f"another nscmonitor daemon (host {owner.get('host')}, PID {owner.get('pid')}, since {owner.get('started_at')})"


def refusal(owner: dict | None, where: str) -> str:
    return (f"{_describe(owner)} is already running on {where}; stop it first (a second daemon on one database "
            "would score images twice), or give this one another database with --db")


def _try_lock_file(f) -> bool:
    if sys.platform == "win32":
        import msvcrt

        f.seek(_WIN_LOCK_OFFSET)
        try:
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _unlock_file(f) -> None:
    if sys.platform == "win32":
        import msvcrt

        f.seek(_WIN_LOCK_OFFSET)
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def read_owner(path: Path) -> dict | None:
    try:
        text = path.read_text(encoding="utf-8").strip("\0 \n")
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def acquire_file_lock(db_file: Path) -> InstanceLock:
    path = lock_path(db_file)
    try:
        f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the daemon's lifetime
    except OSError as exc:
        raise UserFacingError(f"database_url: cannot create the daemon lock file {path}: {exc.strerror or exc}") from exc
    if not _try_lock_file(f):
        f.close()
        raise AlreadyRunning(refusal(read_owner(path), str(db_file)))
    f.seek(0)
    f.truncate()
    f.write(json.dumps(owner_text()) + "\n")
    f.flush()
    return InstanceLock("file", f)


def acquire_pg_lock(url: str, *, shared: bool = False) -> InstanceLock:
    from sqlalchemy import text
    from sqlalchemy.pool import NullPool

    from nscmonitor.store.db import create_engine_checked

    engine = create_engine_checked(url, poolclass=NullPool)
    conn = engine.connect()
    fn = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
    got = conn.execute(text(f"SELECT {fn}(:k)"), {"k": PG_LOCK_KEY}).scalar()
    conn.commit()
    if got:
        return InstanceLock("pg", conn)
    owner = None
    try:
        row = conn.execute(text("SELECT host, pid, started_at FROM daemon_status WHERE state != 'stopped' "
                                "ORDER BY heartbeat_at DESC LIMIT 1")).first()
        if row is not None:
            owner = {"host": row.host, "pid": row.pid, "started_at": row.started_at}
    finally:
        conn.close()
    raise AlreadyRunning(refusal(owner, engine.url.render_as_string(hide_password=True)))


def acquire(url: str) -> InstanceLock:
    """The database to this process alone: no daemon and no other holder (``db copy``)."""
    from nscmonitor.store.db import check_database_path, sqlite_path

    db_file = sqlite_path(url)
    if db_file is not None:
        check_database_path(db_file)
        return acquire_file_lock(db_file)
    return acquire_pg_lock(url)


def acquire_daemon(url: str) -> InstanceLock:
    """A daemon's lock: alone on SQLite; shared with the other daemons on PostgreSQL."""
    from nscmonitor.store.db import sqlite_path

    if sqlite_path(url) is not None:
        return acquire(url)
    return acquire_pg_lock(url, shared=True)
