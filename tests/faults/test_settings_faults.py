"""Class 6: every bad setting or path gives one line naming the key and what is allowed,
never a traceback; nonsense that used to be accepted silently is refused; read-only commands
never create a database. Real CLI processes, real files; read-only cases use permissions, or
a read-only bind mount when the tests run as root (root ignores permissions)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from read_only import read_only  # tests/ is on the path

from nscmonitor.config import parse_settings
from nscmonitor.core.errors import ConfigError


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The CLI in this process (the same ``main`` the console script runs; an unexpected
    exception would fail the test with its traceback). The process-level cases use _nsc."""
    from nscmonitor.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with redirect_stdout(out), redirect_stderr(err):
            try:
                rc = main(list(args))
            except SystemExit as exc:  # argparse
                rc = exc.code
    finally:
        os.chdir(old)
    return subprocess.CompletedProcess(list(args), rc, out.getvalue(), err.getvalue())


def _nsc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HOME=str(cwd or tempfile.gettempdir()))
    return subprocess.run([sys.executable, "-m", "nscmonitor", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=cwd)


def _one_line(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = [x for x in p.stderr.splitlines() if x.strip() and not x.startswith("usage:")
             and not x.startswith(" ")]
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def _config(tmp_path: Path, body: str, **kw) -> Path:
    cfg = tmp_path / "c.toml"
    head = (f'database_url = "sqlite:///{tmp_path / "nsc.db"}"\nmodels_dir = "{tmp_path / "models"}"\n'
            f'log_dir = "{tmp_path / "logs"}"\n')
    cfg.write_text(head + body, encoding="utf-8", **kw)
    return cfg


WATCH = '[[watch]]\npath = "{w}"\nexperiment = "E"\n'


@pytest.mark.parametrize(("body", "needles"), [
    ('[[watch]]\npath = "{w}"\nquiet_seconds = nan\n', ["watch[0].quiet_seconds", "finite"]),
    ('[[watch]]\npath = "{w}"\nquiet_seconds = inf\n', ["watch[0].quiet_seconds", "finite"]),
    ('[[watch]]\npath = "{w}"\nrescan_interval = inf\n', ["watch[0].rescan_interval", "finite"]),
    ('[[watch]]\npath = "{w}"\nrescan_interval = -1.0\n', ["watch[0].rescan_interval", "> 0"]),
    ('max_pixels = -5\n' + WATCH, ["max_pixels", "positive"]),
    ('[retrain.train]\nlr = nan\n' + WATCH, ["retrain.train.lr", "finite"]),
    ('[[watch]]\npath = "{w}"\nprofile = "custom:lab"\n', ["watch[0].profile", "'lab' is not defined"]),
    ('[[custom_profiles]]\nname = 3\nregex = "(?P<well>[A-H]\\\\d+)"\n' + WATCH, ["custom_profiles[0].name", "str"]),
    ('[[custom_profiles]]\nname = "lab"\nregex = "(?P<well>[A-H]\\\\d+)"\nindex_base = "1"\n' + WATCH,
     ["custom_profiles[0].index_base", "int"]),
    ('[[custom_profiles]]\nname = "lab"\nregex = "(?P<well>[A-H]\\\\d+)"\nsidecars = "x.xml"\n' + WATCH,
     ["custom_profiles[0].sidecars", "list"]),
    ('[[custom_profiles]]\nname = "lab"\nregex = "(?P<well>[A-H]\\\\d+)"\ntarget = 7\n' + WATCH,
     ["custom_profiles[0].target", "str"]),
    ('custom_profiles = "lab"\n' + WATCH, ["custom_profiles", "array of tables"]),
])
def test_bad_setting_is_one_line_naming_the_key(tmp_path: Path, body: str, needles: list[str]) -> None:
    w = tmp_path / "w"
    w.mkdir()
    cfg = _config(tmp_path, body.replace("{w}", str(w)))
    _one_line(_cli("run", "--config", str(cfg), "--once"), *needles)
    assert not (tmp_path / "nsc.db").exists()


def test_config_that_is_not_utf8(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_bytes('[[watch]]\npath = "/data/Pläte"\n'.encode("latin-1"))
    _one_line(_cli("status", "--config", str(cfg)), str(cfg), "not UTF-8", "UTF-8")


@pytest.mark.parametrize(("url", "needles"), [
    ("foo://host/db", ["database_url", "unsupported database 'foo'", "sqlite, postgresql"]),
    ("mysql://u@h/db", ["database_url", "'mysql'", "sqlite, postgresql"]),
    ("postgresql+pg8000://u@h/db", ["database_url", "driver", "not installed"]),
    ("nonsense", ["database_url", "sqlite:///"]),
])
def test_database_url_dialect_and_driver(tmp_path: Path, url: str, needles: list[str]) -> None:
    pytest.importorskip("sqlalchemy")
    if "pg8000" in url:
        import importlib.util

        if importlib.util.find_spec("pg8000") is not None:
            pytest.skip("pg8000 is installed here: the missing-driver case needs it absent")
    (tmp_path / "w").mkdir()
    _one_line(_cli("run", "--db", url, "--watch", str(tmp_path / "w"), "--once"), *needles)


def test_database_path_that_is_a_folder(tmp_path: Path, tiny_model: Path) -> None:
    (tmp_path / "w").mkdir()
    _one_line(_cli("run", "--db", f"sqlite:///{tmp_path}", "--watch", str(tmp_path / "w"), "--model",
                   str(tiny_model), "--once"), "database_url", "is a folder")
    _one_line(_cli("status", "--db", f"sqlite:///{tmp_path}"), "database_url", "folder")


@pytest.mark.parametrize(("plate_format", "ok"), [("7", False), ("0", False), ("-96", False), ("384", True)])
def test_plate_format_flag(tmp_path: Path, plate_format: str, ok: bool) -> None:
    p = _cli("parse", "--plate-format", plate_format, "P1_A01_f1.tif")
    if ok:
        assert p.returncode == 0, p.stderr
    else:
        assert p.returncode == 2 and "Traceback" not in p.stderr
        last = p.stderr.strip().splitlines()[-1]
        assert "--plate-format" in last and "6, 12, 24, 48, 96, 384, 1536" in last, last


@pytest.mark.parametrize("flag", [["--quiet", "nan"], ["--quiet", "inf"], ["--quiet", "-1"],
                                  ["--batch-size", "0"], ["--engine", "gpu9"], ["--pixel-size", "0"],
                                  ["--pixel-size", "nan"], ["--pixel-size", "1e6"]])
def test_run_flags_refuse_nonsense(tmp_path: Path, flag: list[str]) -> None:
    p = _cli("run", "--db", f"sqlite:///{tmp_path / 'nsc.db'}", "--watch", str(tmp_path), *flag, "--once")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert flag[0] in p.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "nsc.db").exists()


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["export", "--experiment", "E", "-o", "x.csv"],
                                     ["doctor"], ["db", "check"], ["db", "backup"], ["models", "list"],
                                     ["models", "show", "v1"]])
def test_read_only_commands_never_create_a_database(tmp_path: Path, command: list[str]) -> None:
    typo = tmp_path / "typo" / "nscmonitr.db"
    p = _cli(*command, "--db", f"sqlite:///{typo}", cwd=tmp_path)
    assert "Traceback" not in p.stderr
    if command[0] != "doctor":
        _one_line(p, str(typo))
    assert not typo.exists() and not typo.parent.exists()


def test_values_refused_at_the_edge() -> None:
    """The same rules straight through the settings parser (what the dashboard and tests use)."""
    for bad in ({"max_pixels": 0}, {"max_pixels": -1}, {"batch_size": 0},
                {"watch": [{"path": "/x", "quiet_seconds": float("nan")}]},
                {"watch": [{"path": "/x", "quiet_seconds": 1e9}]},
                {"watch": [{"path": "/x", "rescan_interval": float("inf")}]},
                {"retrain": {"epochs": 0}}, {"retrain": {"train": {"dropout": [0.1, float("inf")]}}},
                {"retrain": {"device": "gpu"}}, {"retrain": {"device": "cuda:x"}},
                {"database_url": "oracle://u@h/db"}):
        with pytest.raises(ConfigError):
            parse_settings(bad, env={})
    ok = parse_settings({"max_pixels": 1, "watch": [{"path": "/x", "quiet_seconds": 0, "rescan_interval": 0.5}]},
                        env={})
    assert ok.max_pixels == 1 and ok.watch[0].rescan_interval == 0.5
    assert ok.retrain.device == "auto"
    assert parse_settings({"retrain": {"device": "cuda:1"}}, env={}).retrain.device == "cuda:1"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions and mounts")
def test_read_only_database(tmp_path: Path, tiny_model: Path) -> None:
    (tmp_path / "w").mkdir()
    dbdir = tmp_path / "db"
    dbdir.mkdir()
    up = _nsc("db", "upgrade", "--db", f"sqlite:///{dbdir / 'nsc.db'}")
    assert up.returncode == 0, up.stderr
    with read_only(dbdir) as ro:
        db = ro / "nsc.db"
        run = _nsc("run", "--db", f"sqlite:///{db}", "--watch", str(tmp_path / "w"), "--model", str(tiny_model),
                   "--once")
        _one_line(run, "database_url", str(db), "read-only")
        status = _nsc("status", "--db", f"sqlite:///{db}")
        _one_line(status, str(db), "read-only", "-shm")
        assert sorted(p.name for p in ro.iterdir()) == ["nsc.db"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions and mounts")
def test_database_folder_not_writable(tmp_path: Path, tiny_model: Path) -> None:
    (tmp_path / "w").mkdir()
    dbdir = tmp_path / "db"
    dbdir.mkdir()
    with read_only(dbdir) as ro:
        run = _nsc("run", "--db", f"sqlite:///{ro / 'nsc.db'}", "--watch", str(tmp_path / "w"), "--model",
                   str(tiny_model), "--once")
        _one_line(run, "database_url", str(ro), "not writable", "-wal")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions and mounts")
def test_unwritable_models_dir(tmp_path: Path, tiny_model: Path) -> None:
    (tmp_path / "w").mkdir()
    models = tmp_path / "registry"
    models.mkdir()
    with read_only(models) as ro:
        run = _nsc("run", "--config", str(_models_config(tmp_path, ro)), "--watch", str(tmp_path / "w"),
                   "--model", str(tiny_model), "--once")
        _one_line(run, "models_dir", str(ro), "not writable")
    file_instead = tmp_path / "models.txt"
    file_instead.write_text("x", encoding="utf-8")
    run = _nsc("run", "--config", str(_models_config(tmp_path, file_instead)), "--watch", str(tmp_path / "w"),
               "--model", str(tiny_model), "--once")
    _one_line(run, "models_dir", "is a file")


def _models_config(tmp_path: Path, models: Path) -> Path:
    cfg = tmp_path / "models.toml"
    cfg.write_text(f'database_url = "sqlite:///{tmp_path / "nsc.db"}"\nmodels_dir = "{models}"\n'
                   f'log_dir = "{tmp_path / "logs"}"\n', encoding="utf-8")
    return cfg


def test_file_that_is_not_a_database(tmp_path: Path, tiny_model: Path) -> None:
    db = tmp_path / "nsc.db"
    db.write_bytes(b"these are not the pages you are looking for" * 100)
    before = db.read_bytes()
    (tmp_path / "w").mkdir()
    _one_line(_cli("status", "--db", f"sqlite:///{db}"), "file is not a database", "database_url")
    _one_line(_cli("run", "--db", f"sqlite:///{db}", "--watch", str(tmp_path / "w"), "--model", str(tiny_model),
                   "--once"), "file is not a database")
    assert db.read_bytes() == before
