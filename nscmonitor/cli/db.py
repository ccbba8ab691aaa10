"""``nscmonitor db``: upgrade (after a backup), backup, integrity check, PostgreSQL roles, copy."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nscmonitor.cli.args import add_db_options, settings_from


def cmd_db(args: argparse.Namespace) -> int:
    from nscmonitor.store import db

    if args.db_command == "roles":
        from nscmonitor.store.roles import RoleNames, psql_script

        print(psql_script(RoleNames(database=args.database, owner=args.owner, daemon=args.daemon,
                                    reader=args.reader)), end="")
        return 0
    if args.db_command == "copy":
        from nscmonitor.store.copy import copy_database

        checks = copy_database(args.source, args.target, batch=args.batch, progress=sys.stderr.isatty())
        for c in checks:
            print(f"{c.table:<16} {c.target_rows:>9} rows  ({c.copied_now} copied now)  verified")
        print(f"copied into {db.masked(args.target)}: {sum(c.target_rows for c in checks)} rows in "
              f"{len(checks)} tables, counts and checksums match the source")
        return 0
    s = settings_from(args)
    if args.db_command == "upgrade":
        before, after, saved = db.upgrade_with_backup(s.database_url)
        print(f"database at {after} (was {before or 'empty'})" + (f"; backup {saved}" if saved else ""))
    elif args.db_command == "backup":
        dest = db.backup(s.database_url, Path(args.output) if args.output else None)
        print(f"backup written to {dest}")
    elif args.db_command == "check":
        problems = db.integrity_check(s.database_url)
        print("\n".join(problems))
        return 0 if problems == ["ok"] else 1
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("db", help="database maintenance: upgrade (backs up first), backup, check, roles, copy")
    add_db_options(p)
    dsub = p.add_subparsers(dest="db_command", required=True)
    add_db_options(dsub.add_parser("upgrade", help="migrate the schema to this version (after a backup)"))
    b = dsub.add_parser("backup", help="consistent online backup of the SQLite database")
    add_db_options(b)
    b.add_argument("-o", "--output", help="backup file (default: beside the database, time-stamped)")
    add_db_options(dsub.add_parser("check", help="SQLite integrity check (exit 1 on problems)"))
    r = dsub.add_parser("roles", help="print the SQL that creates least-privilege PostgreSQL roles "
                                      "(owner: migrations; daemon: rows only; reader: read-only)")
    r.add_argument("--print", action="store_true", required=True, help="print the psql script (nothing is run)")
    r.add_argument("--database", default="nscmonitor", help="database name (default: nscmonitor)")
    r.add_argument("--owner", default="nsc_owner", help="role that owns the schema and runs 'db upgrade'")
    r.add_argument("--daemon", default="nsc_daemon", help="role of 'nscmonitor run': reads and writes rows")
    r.add_argument("--reader", default="nsc_reader", help="read-only role: dashboard, export, status, report")
    c = dsub.add_parser("copy", help="copy a SQLite database into an upgraded PostgreSQL database (resumable; "
                                     "verified by per-table counts and checksums)")
    c.add_argument("source", help="SQLite URL, e.g. sqlite:///C:/nscmonitor/nscmonitor.db (stop its daemon first)")
    c.add_argument("target", help="PostgreSQL URL at the same schema revision ('db upgrade' it first); the "
                                  "password from PGPASSWORD or .pgpass, not the URL")
    c.add_argument("--batch", type=int, default=1000, help="rows per committed batch (default 1000)")
    p.set_defaults(func=cmd_db)
