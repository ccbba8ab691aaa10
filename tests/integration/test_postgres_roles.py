"""Least privilege on a real PostgreSQL server: the roles ``nscmonitor db roles --print``
creates, connected to one by one. The owner migrates; the daemon writes rows but cannot
create, alter or drop a table; the reader reads (status, export) and cannot write. Passwords
reach nscmonitor through PGPASSWORD, a .pgpass file, a service file or the config's
database_password_file,
and appear in no output or log."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError

from conftest import cells_image, pg_admin_exec, write_tiff
from nscmonitor.cli import main
from nscmonitor.store.db import open_engine
from nscmonitor.store.schema import SchemaError, ensure_schema, head_revision
from nscmonitor.store.roles import RoleNames, cluster_statements, database_statements, psql_script
from nscmonitor.store.writer import Writer


@pytest.fixture()
def roles(pg_admin_url: str, pg_url: str):
    """Roles named for this test, set up with the printed statements, with fresh passwords."""
    sfx = uuid.uuid4().hex[:8]
    names = RoleNames(database=make_url(pg_url).database, owner=f"o_{sfx}", daemon=f"d_{sfx}", reader=f"r_{sfx}")
    pg_admin_exec(pg_admin_url, *cluster_statements(names))
    pg_admin_exec(pg_url, *database_statements(names))
    pw = {r: uuid.uuid4().hex for r in ("owner", "daemon", "reader")}
    pg_admin_exec(pg_admin_url, *(f"ALTER ROLE {getattr(names, r)} PASSWORD '{p}'" for r, p in pw.items()))
    base = make_url(pg_url)
    urls = {r: URL.create(base.drivername, getattr(names, r), None, base.host, base.port, base.database)
            .render_as_string() for r in pw}
    yield names, urls, pw
    pg_admin_exec(pg_admin_url, f'DROP DATABASE IF EXISTS "{names.database}" WITH (FORCE)')
    pg_admin_exec(pg_admin_url, *(f"DROP OWNED BY {getattr(names, r)}" for r in pw),
                  *(f"DROP ROLE {getattr(names, r)}" for r in pw))


def _with(url: str, password: str) -> str:
    return make_url(url).set(password=password).render_as_string(hide_password=False)


def _nsc(args: list[str], env_extra: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(env_extra, NSCMONITOR_LOG_DIR=str(tmp_path / "logs"))
    return subprocess.run([sys.executable, "-m", "nscmonitor", *args], capture_output=True, text=True, env=env,
                          timeout=180)


def test_script_is_printed_without_passwords() -> None:
    script = psql_script(RoleNames())
    assert "\\connect nscmonitor" in script and "CREATE ROLE nsc_daemon LOGIN" in script
    statements = [ln for ln in script.splitlines() if ln and not ln.startswith("--")]
    assert statements and not any("PASSWORD" in ln.upper() for ln in statements)
    with pytest.raises(Exception, match="plain lower-case"):
        RoleNames(daemon="Robert'); DROP TABLE x;--")


def test_each_role_can_do_its_part_and_no_more(roles, tmp_path: Path) -> None:
    names, urls, pw = roles
    daemon = open_engine(_with(urls["daemon"], pw["daemon"]))
    with pytest.raises(SchemaError, match="run 'nscmonitor db upgrade' as the owner role"):
        ensure_schema(daemon)  # an empty database: only the owner may create the schema
    assert main(["db", "upgrade", "--db", _with(urls["owner"], pw["owner"])]) == 0

    store = Writer(daemon)
    ensure_schema(daemon)
    exp = store.ensure_experiment("E1")
    with daemon.begin() as c:
        c.execute(text("update experiments set watch_path = 'x' where id = :i"), {"i": exp})
        c.execute(text("delete from events"))
    for ddl in ("drop table images", "alter table images add column evil integer", "create table evil (id integer)",
                "truncate images"):
        with pytest.raises(DBAPIError, match="must be owner|permission denied"), daemon.begin() as c:
            c.execute(text(ddl))

    reader = open_engine(_with(urls["reader"], pw["reader"]))
    with reader.connect() as c:
        assert c.execute(text("select name from experiments")).scalars().all() == ["E1"]
    for dml in ("insert into experiments (name, created_at) values ('x', now())", "delete from experiments",
                "drop table images"):
        with pytest.raises(DBAPIError, match="read-only transaction|permission denied|must be owner"), \
                reader.begin() as c:
            c.execute(text(dml))


def test_passwords_from_environment_pgpass_and_file_never_printed(roles, tmp_path: Path) -> None:
    names, urls, pw = roles
    assert main(["db", "upgrade", "--db", _with(urls["owner"], pw["owner"])]) == 0
    watch = tmp_path / "watch"
    for i in range(2):
        write_tiff(watch / f"P1_A0{i + 1}_1_00d00h00m.tif", cells_image(i))
    from nscmonitor.engines.tiny import build_tiny_classifier

    model = tmp_path / "tiny.onnx"
    build_tiny_classifier(model, input_size=32)
    outputs = []
    # the daemon with PGPASSWORD
    r = _nsc(["run", "--db", urls["daemon"], "--watch", str(watch), "--model", str(model), "--once",
              "--no-schedule"], {"PGPASSWORD": pw["daemon"]}, tmp_path)
    assert r.returncode == 0, r.stderr
    outputs += [r.stdout, r.stderr]
    # the reader through a .pgpass file
    host = make_url(urls["reader"])
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"{host.host}:{host.port}:{names.database}:{names.reader}:{pw['reader']}\n")
    pgpass.chmod(0o600)
    r = _nsc(["status", "--db", urls["reader"], "--json"], {"PGPASSFILE": str(pgpass)}, tmp_path)
    assert r.returncode in (0, 3) and '"exit_code"' in r.stdout, r.stderr
    outputs += [r.stdout, r.stderr]
    out = tmp_path / "e.csv"
    r = _nsc(["export", "--db", urls["reader"], "--experiment", "watch", "-o", str(out)],
             {"PGPASSFILE": str(pgpass)}, tmp_path)
    assert r.returncode == 0 and out.read_text().count("\n") > 1, r.stderr
    outputs += [r.stdout, r.stderr]
    # a libpq service file names host, port, database, user and password
    svc = tmp_path / "pg_service.conf"
    svc.write_text(f"[nsc]\nhost={host.host}\nport={host.port}\ndbname={names.database}\nuser={names.reader}\n"
                   f"password={pw['reader']}\n")
    svc.chmod(0o600)
    r = _nsc(["status", "--db", "postgresql+psycopg://@/?service=nsc", "--json"], {"PGSERVICEFILE": str(svc)},
             tmp_path)
    assert r.returncode in (0, 3) and '"exit_code"' in r.stdout, r.stderr
    outputs += [r.stdout, r.stderr]
    # the config's password file: doctor prints the URL, masked
    pwfile = tmp_path / "db.password"
    pwfile.write_text(pw["reader"] + "\n")
    pwfile.chmod(0o600)
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'database_url = "{urls["reader"]}"\ndatabase_password_file = "{pwfile}"\n'
                   f'models_dir = "{tmp_path / "models"}"\nlog_dir = "{tmp_path / "logs"}"\n')
    r = _nsc(["--config", str(cfg), "doctor"], {}, tmp_path)
    assert f"schema {head_revision()}" in r.stdout and "***" in r.stdout, r.stdout + r.stderr
    outputs += [r.stdout, r.stderr]
    # a wrong password: one line, no password in it
    cfg.write_text(cfg.read_text().replace(str(pwfile), str(tmp_path / "wrong")))
    (tmp_path / "wrong").write_text("not-the-password\n")
    (tmp_path / "wrong").chmod(0o600)
    r = _nsc(["--config", str(cfg), "status"], {}, tmp_path)
    assert r.returncode == 2 and "password authentication failed" in r.stderr, r.stderr
    outputs += [r.stdout, r.stderr]
    pwfile.chmod(0o644)
    cfg.write_text(cfg.read_text().replace(str(tmp_path / "wrong"), str(pwfile)))
    r = _nsc(["--config", str(cfg), "status"], {}, tmp_path)
    assert r.returncode == 2 and "readable by other users" in r.stderr
    outputs += [r.stdout, r.stderr]
    logs = [p.read_text(errors="replace") for p in (tmp_path / "logs").rglob("*") if p.is_file()]
    assert logs, "the daemon wrote its log"
    for text_ in outputs + logs:
        for secret in pw.values():
            assert secret not in text_
