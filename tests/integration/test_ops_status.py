"""``nscmonitor status`` exit codes on a real store (SQLite and PostgreSQL), with the clock injected:
0 healthy, 1 stalled, 2 watched folder unreachable, 3 no daemon."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from nscmonitor.cli import main
from nscmonitor.ops.health import STALE_S, health
from nscmonitor.ops.checks import backlog_stall
from nscmonitor.store.db import ensure_schema, open_engine
from nscmonitor.store.reads import Repo, backlog_facts
from nscmonitor.store.writer import Discovered, Writer


@pytest.fixture()
def store(db_url: str) -> Writer:
    engine = open_engine(db_url)
    ensure_schema(engine)
    yield Writer(engine)
    engine.dispose()


def _daemon(store: Writer, tmp_path: Path, *, reachable: bool = True) -> int:
    did = store.start_daemon([str(tmp_path)])
    store.heartbeat(did, state="running", engine="ort-cpu", model_version="v1",
                    watched=[{"path": str(tmp_path / "plates"), "experiment": "e1", "reachable": reachable,
                              "polling": True, "error": None if reachable else "share offline"}])
    return did


def _now() -> datetime:
    return datetime.now(timezone.utc)


def test_no_daemon_is_exit_3(store: Writer) -> None:
    assert health(Repo(store.engine))["exit_code"] == 3


def test_fresh_heartbeat_is_healthy(store: Writer, tmp_path: Path) -> None:
    _daemon(store, tmp_path)
    h = health(Repo(store.engine), now=_now() + timedelta(seconds=10))
    assert (h["exit_code"], h["verdict"]) == (0, "healthy")


def test_old_heartbeat_is_stalled(store: Writer, tmp_path: Path) -> None:
    _daemon(store, tmp_path)
    h = health(Repo(store.engine), now=_now() + timedelta(seconds=STALE_S + 30))
    assert h["exit_code"] == 1 and h["verdict"].startswith("stalled")


def test_unreachable_folder_is_exit_2(store: Writer, tmp_path: Path) -> None:
    _daemon(store, tmp_path, reachable=False)
    h = health(Repo(store.engine), now=_now())
    assert h["exit_code"] == 2 and str(tmp_path / "plates") in h["verdict"]


def test_stopped_daemon_is_exit_3(store: Writer, tmp_path: Path) -> None:
    did = _daemon(store, tmp_path)
    store.heartbeat(did, state="stopped")
    assert health(Repo(store.engine), now=_now())["exit_code"] == 3


def test_status_command_returns_the_code(store: Writer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _daemon(store, tmp_path, reachable=False)
    url = store.engine.url.render_as_string(hide_password=False)
    assert main(["status", "--db", url, "--json"]) == 2
    assert '"exit_code": 2' in capsys.readouterr().out


def _enqueue(store: Writer, tmp_path: Path, n: int) -> None:
    exp = store.ensure_experiment("e1", watch_path=str(tmp_path))
    store.enqueue([Discovered(path=str(tmp_path / f"img{i}.tif"), relpath=f"img{i}.tif", size=100, mtime=1.0,
                              experiment_id=exp, profile=None, key=None, plate=None, plate_format=96, elapsed_h=None,
                              acquired_at=None) for i in range(n)])


def test_backlog_facts_feed_the_stall_check(store: Writer, tmp_path: Path) -> None:
    _enqueue(store, tmp_path, 3)
    now = _now()
    waiting, oldest, last = backlog_facts(store.engine, now)
    assert waiting == 3 and last is None and oldest is not None
    assert backlog_stall(waiting, oldest, last, now) is None  # just discovered
    later = now + timedelta(minutes=30)
    assert "3 images waiting" in backlog_stall(*backlog_facts(store.engine, later), later)


def test_failed_images_in_back_off_are_not_waiting(store: Writer, tmp_path: Path) -> None:
    _enqueue(store, tmp_path, 1)
    (c,) = store.claim(1, 0.0)
    retry_at = (_now() + timedelta(hours=1)).timestamp()
    assert store.fail(c.id, "share hiccup", permanent=False, retry_at=retry_at, max_attempts=5) == "failed"
    assert backlog_facts(store.engine, _now())[0] == 0
    assert backlog_facts(store.engine, _now() + timedelta(hours=2))[0] == 1
