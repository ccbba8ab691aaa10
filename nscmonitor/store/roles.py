"""Least-privilege PostgreSQL roles for one nscmonitor database.

* owner: owns the tables; ``nscmonitor db upgrade`` runs as it (the only role that changes the schema)
* daemon: reads and writes rows of the project's tables; cannot create, alter or drop a table
* reader: reads only (dashboard, ``export``, ``status``, ``report``), every transaction read-only

The statements carry no password: passwords are set by the administrator (``\\password`` in
psql) and reach nscmonitor through libpq (``PGPASSWORD``, ``.pgpass``, a service file) or the
config's ``database_password_file``, never through this script or the command line.
Privileges on tables created later by the owner (migrations) come from default privileges, so
an upgrade needs no re-grant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nscmonitor.core.errors import UserFacingError

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class RoleNames:
    database: str = "nscmonitor"
    owner: str = "nsc_owner"
    daemon: str = "nsc_daemon"
    reader: str = "nsc_reader"
    schema: str = "public"

    def __post_init__(self) -> None:
        for field, value in self.__dict__.items():
            if not _NAME.match(value):
                raise UserFacingError(f"db roles: --{field} {value!r} is not a plain lower-case PostgreSQL name "
                                      "(letters, digits, _; at most 63)")
        if len({self.owner, self.daemon, self.reader}) != 3:
            raise UserFacingError("db roles: the owner, daemon and reader roles must be three different roles")


def _create_role(name: str) -> str:
    return (f"DO $$ BEGIN CREATE ROLE {name} LOGIN; "
            f"EXCEPTION WHEN duplicate_object THEN RAISE NOTICE 'role {name} exists'; END $$")


def cluster_statements(r: RoleNames) -> list[str]:
    """Run once on the server, connected to any database, as a superuser (or a CREATEROLE role)."""
    return [
        _create_role(r.owner), _create_role(r.daemon), _create_role(r.reader),
        f"ALTER ROLE {r.reader} SET default_transaction_read_only = on",
    ]


def database_statements(r: RoleNames) -> list[str]:
    """Run connected to the nscmonitor database (which must exist), as a superuser."""
    s = r.schema
    return [
        f"ALTER DATABASE {r.database} OWNER TO {r.owner}",
        f"REVOKE ALL ON DATABASE {r.database} FROM PUBLIC",
        f"GRANT CONNECT ON DATABASE {r.database} TO {r.daemon}, {r.reader}",
        f"REVOKE CREATE ON SCHEMA {s} FROM PUBLIC",
        f"GRANT USAGE, CREATE ON SCHEMA {s} TO {r.owner}",
        f"GRANT USAGE ON SCHEMA {s} TO {r.daemon}, {r.reader}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {r.daemon}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {r.daemon}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r.reader}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {r.owner} IN SCHEMA {s} "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {r.daemon}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {r.owner} IN SCHEMA {s} GRANT USAGE, SELECT ON SEQUENCES TO {r.daemon}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {r.owner} IN SCHEMA {s} GRANT SELECT ON TABLES TO {r.reader}",
    ]


def psql_script(r: RoleNames) -> str:
    """The whole setup as one psql script (``psql -v ON_ERROR_STOP=1 -f roles.sql``)."""
    lines = [f"-- nscmonitor roles for database {r.database}: run as a PostgreSQL superuser, e.g.",
             "--   sudo -u postgres psql -v ON_ERROR_STOP=1 -f roles.sql",
             f"-- Create the database first (CREATE DATABASE {r.database}); set the passwords afterwards with",
             f"--   \\password {r.owner}   \\password {r.daemon}   \\password {r.reader}",
             f"-- then as {r.owner}: nscmonitor db upgrade --db postgresql+psycopg://{r.owner}@HOST/{r.database}",
             ""]
    lines += [st + ";" for st in cluster_statements(r)]
    lines += ["", f"\\connect {r.database}"]
    lines += [st + ";" for st in database_statements(r)]
    return "\n".join(lines) + "\n"
