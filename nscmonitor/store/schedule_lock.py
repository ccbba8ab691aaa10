"""Who runs the retrain schedule on a database several daemons share.

Scheduled retraining trains on the whole store and promotes models for everyone: on a shared
PostgreSQL database one daemon must run it, not each. The owner holds an exclusive session
advisory lock (``pg_try_advisory_lock``) on a connection of its own, kept open while it runs;
the server drops the lock when that connection ends, however the daemon ends (stopped,
killed, cut off), and another daemon's next attempt takes it. Nothing is left to expire or to
clean up. The lock's connection carries the owner's host and PID as its ``application_name``,
so any daemon, and ``status``, can say who owns the schedule (``schedule_owner``).

On SQLite one daemon runs per database (``store.instance``): it always owns its schedule.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from nscmonitor.store.instance import PG_LOCK_KEY

log = logging.getLogger(__name__)

#: 64-bit key of the schedule's advisory lock (the daemons' shared lock's key plus one)
SCHEDULE_LOCK_KEY = PG_LOCK_KEY + 1
#: the start of the owner's ``application_name``, followed by its host and PID
APP_NAME = "nscmonitor retrain"


class ScheduleLock:
    """This daemon's claim on the retrain schedule: ``take`` until it returns True, then
    ``take`` again now and then to find out whether it still holds it."""

    def __init__(self, url: str) -> None:
        from sqlalchemy.engine import make_url

        self.url = url
        self.shared = make_url(url).get_backend_name() == "postgresql"
        self._engine: Engine | None = None
        self._conn = None
        #: how many times this daemon has taken the lock; a holding that began earlier has ended
        self.generation = 0
        #: the owner's loop and a running retrain's ticket both ask, on one connection
        self._mutex = threading.RLock()

    def take(self) -> bool:
        """True when this daemon holds the schedule (taken now, or still held)."""
        if not self.shared:
            return True
        with self._mutex:
            return self._take()

    def _take(self) -> bool:
        if self._conn is not None and self._alive():
            return True
        conn = self._connect()
        got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": SCHEDULE_LOCK_KEY}).scalar()
        conn.commit()
        if got:
            self._conn = conn
            self.generation += 1
            return True
        conn.close()
        return False

    def holds(self, generation: int) -> bool:
        """True when the lock taken as ``generation`` is held still, without a gap: its own
        connection answers (the server keeps a session's advisory lock until that connection
        ends). Taken again meanwhile, on a new connection, is not the same holding: another
        daemon may have owned the schedule in between."""
        if not self.shared:
            return True
        with self._mutex:
            return generation == self.generation and self._conn is not None and self._alive()

    def _alive(self) -> bool:
        """The holding connection answers; if it does not, it and the lock are gone."""
        try:
            self._conn.execute(text("SELECT 1"))
            self._conn.commit()
            return True
        except SQLAlchemyError as exc:  # the connection died, and the lock with it
            log.warning("lost the connection that held the retrain schedule: %s", str(exc).splitlines()[0])
            self._drop()
            return False

    def release(self) -> None:
        with self._mutex:
            self._release()

    def _release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": SCHEDULE_LOCK_KEY})
                self._conn.commit()
            except SQLAlchemyError:  # closing the connection below releases it anyway
                log.debug("could not unlock the retrain schedule; closing its connection releases it")
        self._drop()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _connect(self):
        if self._engine is None:
            from sqlalchemy.pool import NullPool

            from nscmonitor.store.db import create_engine_checked

            name = f"{APP_NAME} {socket.gethostname()[:30]}:{os.getpid()}"
            self._engine = create_engine_checked(self.url, poolclass=NullPool,
                                                 connect_args={"application_name": name})
        return self._engine.connect()

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except SQLAlchemyError:  # already broken: nothing to close
                log.debug("the retrain schedule's connection was already closed")
            self._conn = None


def schedule_owner(engine: Engine) -> str | None:
    """The daemon holding the retrain schedule of this database ("host:PID", from its lock's
    connection), or None: nobody holds it, or the database is SQLite (its one daemon runs it)."""
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as c:
        name = c.execute(text(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid::bigint = :hi AND l.objid::bigint = :lo"),
            {"hi": SCHEDULE_LOCK_KEY >> 32, "lo": SCHEDULE_LOCK_KEY & 0xFFFFFFFF}).scalar()
    if name is None:
        return None
    return name[len(APP_NAME):].strip() or "a daemon whose host is not recorded"
