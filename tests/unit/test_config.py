from __future__ import annotations

from pathlib import Path

import pytest

from nscmonitor.config import load_settings, parse_settings
from nscmonitor.core.errors import ConfigError


def test_defaults_and_env_override(tmp_path: Path) -> None:
    s = parse_settings({}, env={"NSCMONITOR_DATABASE_URL": "sqlite:///x.db", "NSCMONITOR_BATCH_SIZE": "16"})
    assert s.database_url == "sqlite:///x.db" and s.batch_size == 16 and s.engine == "auto"
    assert parse_settings({}, env={}).database_url.endswith("nscmonitor.db")


def test_watch_folders_are_validated_and_resolved(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('''
engine = "ort-cpu"
[[watch]]
path = "plates/run1"
experiment = "BDNF screen"
profile = "incucyte"
plate_format = 384
plate_map = "map.csv"
induction_time = 2026-11-01T09:00:00Z
polling = true
quiet_seconds = 2
channel = "phase"
pixel_size_um = 2.48
''')
    s = load_settings(cfg, env={})
    w = s.watch[0]
    assert w.path == tmp_path / "plates/run1" and w.plate_map == tmp_path / "map.csv"
    assert w.plate_format == 384 and w.use_polling() and w.channel == "phase" and w.pixel_size_um == 2.48
    assert w.induction_time is not None and w.induction_time.tzinfo is not None
    assert s.engine == "ort-cpu" and s.source == cfg


@pytest.mark.parametrize("data, key", [
    ({"watch": [{"path": "x", "plate_format": 100}]}, "watch[0].plate_format"),
    ({"watch": [{"path": "x", "profile": "zeiss"}]}, "watch[0].profile"),
    ({"watch": [{"path": "x", "polling": "sometimes"}]}, "watch[0].polling"),
    ({"watch": [{"path": "x", "bogus": 1}]}, "watch[0].bogus"),
    ({"watch": [{"path": "x", "quiet_seconds": "5"}]}, "watch[0].quiet_seconds"),
    ({"watch": [{"path": "x", "pixel_size_um": 0}]}, "watch[0].pixel_size_um"),
    ({"watch": [{"path": "x", "pixel_size_um": "1.24"}]}, "watch[0].pixel_size_um"),
    ({"watch": [{"path": "x", "pixel_size_um": 1e6}]}, "watch[0].pixel_size_um"),
    ({"engine": "fast"}, "engine"),
    ({"batch_size": 0}, "batch_size"),
    ({"min_focus_ratio": 1.0}, "min_focus_ratio"),
    ({"min_focus_ratio": -0.1}, "min_focus_ratio"),
    ({"min_focus_ratio": "0.4"}, "min_focus_ratio"),
    ({"database_url": "nscmonitor.db"}, "database_url"),
    ({"retrain": {"schedule": "nightly"}}, "retrain.schedule"),
    ({"retrain": {"require_engine": "yes"}}, "retrain.require_engine"),
    ({"retrain": {"nproc": 0}}, "retrain.nproc"),
    ({"retrain": {"nproc": "2"}}, "retrain.nproc"),
    ({"retrain": {"forecast_epochs": 0}}, "retrain.forecast_epochs"),
    ({"retrain": {"forecast": "yes"}}, "retrain.forecast"),
    ({"custom_profiles": [{"name": "lab", "regex": "(?P<plate>\\w+).tif"}]}, "custom_profiles[0]"),
    ({"colour": "blue"}, "colour"),
])
def test_errors_name_the_bad_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_settings(data, env={})
    assert str(exc.value).startswith(key)


def test_focus_check_is_on_by_default_and_can_be_switched_off() -> None:
    assert parse_settings({}, env={}).min_focus_ratio == 0.4
    assert parse_settings({"min_focus_ratio": 0}, env={}).min_focus_ratio == 0.0


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="NSCMONITOR_THREADS"):
        parse_settings({}, env={"NSCMONITOR_THREADS": "many"})


def test_missing_explicit_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml", env={})


def test_unc_paths_poll_by_default() -> None:
    s = parse_settings({"watch": [{"path": "\\\\server\\share\\incucyte"}]}, env={})
    assert s.watch[0].use_polling()


def test_retrain_requires_a_gated_engine_unless_told_otherwise() -> None:
    assert parse_settings({}, env={}).retrain.require_engine is True
    assert parse_settings({"retrain": {"require_engine": False}}, env={}).retrain.require_engine is False


def test_retrain_trains_on_one_process_unless_told_otherwise() -> None:
    assert parse_settings({}, env={}).retrain.nproc == 1
    assert parse_settings({"retrain": {"nproc": 2}}, env={}).retrain.nproc == 2
    rt = parse_settings({"retrain": {"forecast": False, "forecast_epochs": 50}}, env={}).retrain
    assert (rt.forecast, rt.forecast_epochs) == (False, 50)
    assert parse_settings({}, env={}).retrain.forecast is True


def test_database_password_file_is_read_private_and_masked(tmp_path: Path) -> None:
    from nscmonitor.store.db import masked

    pw = tmp_path / "db.password"
    pw.write_text("s3cret-pw\n")
    pw.chmod(0o600)
    url = "postgresql+psycopg://nsc_daemon@dbhost/nscmonitor"
    s = parse_settings({"database_url": url, "database_password_file": "db.password"}, base=tmp_path, env={})
    assert s.database_url == "postgresql+psycopg://nsc_daemon:s3cret-pw@dbhost/nscmonitor"
    assert "s3cret-pw" not in masked(s.database_url) and "nsc_daemon:***@dbhost" in masked(s.database_url)
    s = parse_settings({"database_url": url}, env={"NSCMONITOR_DATABASE_PASSWORD_FILE": str(pw)})
    assert s.database_url.endswith(":s3cret-pw@dbhost/nscmonitor")
    pw.chmod(0o640)
    with pytest.raises(ConfigError, match="readable by other users; chmod 600"):
        parse_settings({"database_url": url, "database_password_file": str(pw)}, env={})
    pw.chmod(0o600)
    for data, msg in (({"database_url": "sqlite:///x.db"}, "only for postgresql"),
                      ({"database_url": "postgresql+psycopg://u:inline@h/d"}, "already holds a password")):
        with pytest.raises(ConfigError, match=msg) as exc:
            parse_settings({**data, "database_password_file": str(pw)}, env={})
        assert "inline" not in str(exc.value) and "s3cret" not in str(exc.value)
    with pytest.raises(ConfigError, match="cannot read"):
        parse_settings({"database_url": url, "database_password_file": str(tmp_path / "missing")}, env={})
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "empty").chmod(0o600)
    with pytest.raises(ConfigError, match="is empty"):
        parse_settings({"database_url": url, "database_password_file": str(tmp_path / "empty")}, env={})
