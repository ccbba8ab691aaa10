"""A real daemon process for the fault suite: ``nscmonitor run`` on a temp folder with a
real SQLite file and a tiny ONNX model, its peak RSS sampled from outside all along, and
hostile files written the way an instrument (or an attacker) would."""

from __future__ import annotations

import os
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

#: the stated bound: the daemon's resident memory never exceeds this in the fault suite
RSS_BOUND = int(1.5 * (1 << 30))
#: the pixel cap the suite runs with (a setting; memory per image scales with it)
MAX_PIXELS = 50_000_000


def query(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
            c.text_factory = lambda b: b.decode("utf-8", "surrogateescape")
            return c.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []


def count(db: Path, where: str = "1=1") -> int:
    rows = query(db, f"select count(*) from images where {where}")
    return rows[0][0] if rows else 0


class Daemon:
    """``nscmonitor run`` as a subprocess; ``peak_rss`` is its highest resident set size
    seen by a sampler thread (every 20 ms) over the whole life of the process."""

    def __init__(self, watch: Path, db: Path, model: Path, *extra: str, once: bool = False,
                 env: dict[str, str] | None = None) -> None:
        self.db = db
        self.cmd = [sys.executable, "-m", "nscmonitor", "run", "--db", f"sqlite:///{db}", "--watch", str(watch),
                    "--experiment", "faults", "--model", str(model), "--quiet", "0", "--no-schedule", *extra]
        if once:
            self.cmd.append("--once")
        self.env = {**os.environ, "NSCMONITOR_THREADS": "1", "NSCMONITOR_MAX_PIXELS": str(MAX_PIXELS),
                    "NSCMONITOR_LOG_DIR": str(db.parent / "logs"), **(env or {})}
        self.peak_rss = 0
        self.proc: subprocess.Popen | None = None
        self._sampler: threading.Thread | None = None

    def start(self) -> Daemon:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=self.env)
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self

    def _sample(self) -> None:
        try:
            p = psutil.Process(self.proc.pid)
            while self.proc.poll() is None:
                self.peak_rss = max(self.peak_rss, p.memory_info().rss)
                time.sleep(0.02)
        except psutil.Error:
            return

    def wait_until(self, cond: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
        end = time.monotonic() + timeout
        while not cond():
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}) waiting for {what}: {self.stderr()}")
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def settled(self, n: int) -> Callable[[], bool]:
        """All n images in a final state (done, quarantined, skipped)."""
        return lambda: count(self.db, "status in ('done', 'quarantined', 'skipped')") >= n

    def run_once(self, timeout: float = 300.0) -> str:
        self.start()
        try:
            _, err = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._sampler.join(timeout=5)
        assert self.proc.returncode == 0, err.decode(errors="replace")[-3000:]
        return err.decode(errors="replace")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=60)
        self._sampler.join(timeout=5)
        return err.decode(errors="replace")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._sampler.join(timeout=5)

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        return (self.proc.stderr.read() or b"").decode(errors="replace")[-3000:]


# --- hostile TIFFs written by hand (tifffile would refuse to write most of them) -----
def raw_tiff(path: Path, *, width: int, height: int, bits: int = 8, compression: int = 1, sample_format: int = 1,
             samples: int = 1, strip_offset: int | None = None, strip_bytes: int | None = None,
             resolution: tuple[int, int] | None = None, resolution_unit: int = 3, pages: int = 1,
             data: bytes | None = None, sparse_size: int = 0) -> Path:
    """A little-endian TIFF whose tags say exactly what the caller asks, true or not.
    ``data`` is written once and every page points at it; ``sparse_size`` extends the file
    with a hole (no disk space used) to that many bytes."""
    head = 8
    data = data if data is not None else b""
    data_at = head
    body = bytearray(data)
    ifds = bytearray()
    ifd_at = data_at + len(body)
    ifd_at += ifd_at % 2
    res_at = None
    n_entries = 11 + (3 if resolution else 0)
    ifd_size = 2 + 12 * n_entries + 4
    offsets = []
    for i in range(pages):
        offsets.append(ifd_at + i * (ifd_size + 8))
    for i in range(pages):
        res_at = offsets[i] + ifd_size
        entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, bits), (259, 3, 1, compression),
                   (262, 3, 1, 1), (273, 4, 1, strip_offset if strip_offset is not None else data_at),
                   (277, 3, 1, samples), (278, 4, 1, height),
                   (279, 4, 1, strip_bytes if strip_bytes is not None else len(data)), (284, 3, 1, 1),
                   (339, 3, 1, sample_format)]
        if resolution:
            entries += [(282, 5, 1, res_at), (283, 5, 1, res_at), (296, 3, 1, resolution_unit)]
        entries.sort()
        ifd = struct.pack("<H", len(entries))
        for tag, typ, cnt, value in entries:
            if typ == 3:
                ifd += struct.pack("<HHIHH", tag, typ, cnt, value & 0xFFFF, 0)
            else:
                ifd += struct.pack("<HHII", tag, typ, cnt, value & 0xFFFFFFFF)
        ifd += struct.pack("<I", offsets[i + 1] if i + 1 < pages else 0)
        ifds += ifd + (struct.pack("<II", *resolution) if resolution else b"\0" * 8)
    out = b"II*\x00" + struct.pack("<I", offsets[0]) + bytes(body)
    out += b"\0" * (ifd_at - len(out)) + bytes(ifds)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(out)
        if sparse_size > len(out):
            fh.truncate(sparse_size)
    return path
