"""A real daemon tells the notification hook once when the disk under its database and models
folder turns low, once when it turns critical and once when there is room again, with what a
prune of superseded model versions would free; a restart does not tell it again. Free space is
outside the program, so the probe is the tests' own; the daemon, SQLite, the registry's
folders and the hook (a real subprocess) are real."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from nscmonitor.config import parse_settings
from nscmonitor.daemon import build_runner
from nscmonitor.engines.tiny import build_tiny_classifier
from nscmonitor.registry.registry import Registry
from nscmonitor.store.db import ensure_schema, open_engine

GIB = 1 << 30


def test_the_hook_hears_low_critical_and_room_again_once_each(tmp_path: Path, tiny_model: Path) -> None:
    received = tmp_path / "hook.jsonl"
    script = tmp_path / "hook.py"
    script.write_text(f"import sys\nopen({str(received)!r}, 'a').write(sys.stdin.read() + '\\n')\n")
    watch = tmp_path / "watch"
    watch.mkdir()
    settings = parse_settings({
        "database_url": f"sqlite:///{tmp_path / 'nsc.db'}", "models_dir": str(tmp_path / "models"),
        "log_dir": str(tmp_path / "logs"), "retrain": {"hook": f"{sys.executable} {script}"},
        "watch": [{"path": str(watch), "experiment": "E1", "quiet_seconds": 0.0}]}, env={})
    db = open_engine(settings.database_url)
    ensure_schema(db)
    reg = Registry(settings.models_dir, db)
    for i in (1, 2, 3):  # v2, a candidate v3 was promoted over, is what a prune would free
        build_tiny_classifier(tmp_path / f"v{i}.onnx", input_size=32, seed=i)
        reg.register(tmp_path / f"v{i}.onnx", version=f"v{i}")
    reg.promote("v3")
    free = {"bytes": 50 * GIB}

    def disk_usage(_folder: Path) -> SimpleNamespace:
        return SimpleNamespace(total=100 * GIB, used=100 * GIB - free["bytes"], free=free["bytes"])

    def events() -> list[dict]:
        return [json.loads(line) for line in received.read_text().splitlines()
                if line.strip() and json.loads(line)["kind"].startswith("disk_")] if received.exists() else []

    def wait_for(n: int) -> list[dict]:
        deadline = time.monotonic() + 60
        while len(events()) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return events()

    def start():
        runner = build_runner(settings, model=tiny_model, retry_base_s=0.05, poll_interval=0.1, heartbeat_s=0.05,
                              disk_usage=disk_usage, disk_check_s=0.1)
        t = threading.Thread(target=runner.run, daemon=True)
        t.start()
        return runner, t

    runner, t = start()
    try:
        time.sleep(1.0)
        assert events() == []  # room from the start: nothing to tell
        free["bytes"] = 3 * GIB
        got = wait_for(1)
        assert [e["kind"] for e in got] == ["disk_space_low"] and got[0]["level"] == "warning"
        assert "3.0 GiB free" in got[0]["message"] and "the database and the models folder" in got[0]["message"]
        assert "'nscmonitor models prune' would free" in got[0]["message"]
        assert "(1 superseded version(s))" in got[0]["message"]
        assert got[0]["data"]["prunable_bytes"] > 0
        # status and the dashboard's status tab say it too (they see the database's volume
        # themselves, not the models folder's)
        from nscmonitor.gui.state.presenter import read_status
        from nscmonitor.ops.health import health
        from nscmonitor.store.reads import Repo

        assert any("3.0 GiB free" in w and "daemon's look" in w for w in health(Repo(db))["warnings"])
        assert any("3.0 GiB free" in w for w in read_status(db).warnings)
        free["bytes"] = GIB // 2
        got = wait_for(2)
        assert [e["kind"] for e in got] == ["disk_space_low", "disk_space_critical"] and got[1]["level"] == "error"
        free["bytes"] = 50 * GIB
        got = wait_for(3)
        assert [e["kind"] for e in got][2] == "disk_space_ok" and "room again" in got[2]["message"]
        time.sleep(1.0)  # many more checks: the hook hears nothing more
        assert len(events()) == 3
        assert not any("daemon's look" in w for w in health(Repo(db))["warnings"])
        assert not any("GiB free" in w for w in read_status(db).warnings)
    finally:
        runner.stop_event.set()
        t.join(30)
    free["bytes"] = 3 * GIB  # low again before a restart: told, since the log's last word was "room again"
    runner, t = start()
    try:
        assert [e["kind"] for e in wait_for(4)][3] == "disk_space_low"
    finally:
        runner.stop_event.set()
        t.join(30)
    runner, t = start()  # restarted while still low: the log says it was told
    try:
        time.sleep(1.0)
        assert len(events()) == 4
    finally:
        runner.stop_event.set()
        t.join(30)


def test_a_volume_that_cannot_be_read_is_logged_and_nothing_is_told(tmp_path: Path, caplog) -> None:
    from nscmonitor.ops.disk_notice import DiskNotice
    from nscmonitor.store.reads import Repo

    db = open_engine(f"sqlite:///{tmp_path / 'nsc.db'}")
    ensure_schema(db)

    def unreadable(folder: Path):
        raise PermissionError(13, "Permission denied", str(folder))

    notice = DiskNotice(db, Repo(db), database_file=tmp_path / "nsc.db", models_dir=tmp_path / "models", hook=None,
                        clock=lambda: 0.0, disk_usage=unreadable)
    notice.check()  # must not raise into the daemon's loop
    assert "cannot read the free space" in caplog.text
    assert Repo(db).last_event_of(("disk_space_low", "disk_space_critical", "disk_space_ok")) is None
