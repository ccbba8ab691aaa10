"""sd_notify against a real AF_UNIX datagram socket, the way systemd listens."""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

import pytest

from nscmonitor.ops.notify import Notifier, WatchdogPinger, watchdog_interval_s

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX") or sys.platform == "win32",
                                reason="sd_notify needs AF_UNIX datagram sockets (Linux)")


@pytest.fixture()
def listener(tmp_path: Path):
    path = tmp_path / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(5)
    yield str(path), s
    s.close()


def _fields(sock: socket.socket) -> dict[str, str]:
    return dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())


def test_ready_watchdog_stopping_reach_the_socket(listener) -> None:
    addr, sock = listener
    n = Notifier(addr)
    assert n.ready("watching 2 folders")
    got = _fields(sock)
    assert got["READY"] == "1" and got["MAINPID"] == str(os.getpid()) and got["STATUS"] == "watching 2 folders"
    assert n.watchdog()
    assert _fields(sock) == {"WATCHDOG": "1"}
    assert n.stopping()
    assert _fields(sock) == {"STOPPING": "1"}
    n.close()


def test_abstract_namespace_address() -> None:
    name = f"nscmonitor-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(5)
    n = Notifier("@" + name)
    try:
        assert n.watchdog()
        assert s.recv(100) == b"WATCHDOG=1"
    finally:
        n.close()
        s.close()


def test_without_notify_socket_every_call_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    assert n.ready() is False and n.watchdog() is False


def test_a_vanished_socket_is_logged_once_and_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier(str(tmp_path / "gone.sock"))
    with caplog.at_level(logging.WARNING, logger="nscmonitor.ops.notify"):
        assert n.watchdog() is False
        assert n.watchdog() is False
    assert len([r for r in caplog.records if "cannot notify systemd" in r.message]) == 1


def test_watchdog_interval_is_half_the_period_and_only_for_our_pid() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "300000000"}) == 150.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "300000000", "WATCHDOG_PID": str(os.getpid())}) == 150.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "300000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({}) is None


def test_pinger_rate_limits_with_an_injected_clock(listener) -> None:
    addr, sock = listener
    t = [100.0]
    p = WatchdogPinger(Notifier(addr), min_interval_s=10, clock=lambda: t[0])
    assert p.beat() is True
    t[0] += 5
    assert p.beat() is False
    t[0] += 6
    assert p.beat() is True
    assert sock.recv(100) == b"WATCHDOG=1" and sock.recv(100) == b"WATCHDOG=1"
