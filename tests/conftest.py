"""Shared fixtures. Tests run against the installed package; the team's shared reference
folder sits beside the repository and is optional (tests that need it skip with a reason)."""

from __future__ import annotations

import contextlib
import os
import signal
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


#: Seconds a test's threads and child processes get to finish after its teardown.
LEAK_GRACE_S = 2.0


def _child_pids() -> set[int]:
    """Living (not zombie) descendants of this process: psutil when installed, else /proc."""
    try:
        import psutil
    except ImportError:
        return _proc_children(os.getpid())
    out = set()
    for c in psutil.Process().children(recursive=True):
        try:
            if c.status() != psutil.STATUS_ZOMBIE:
                out.add(c.pid)
        except psutil.NoSuchProcess:
            continue
    return out


def _proc_children(pid: int) -> set[int]:
    out: set[int] = set()
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:  # no /proc (not Linux): process leaks go unchecked there
        return out
    for e in entries:
        try:
            fields = Path(f"/proc/{e}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            out.add(int(e))
            out |= _proc_children(int(e))
    return out


def _describe_pid(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = "?"
    return f"pid {pid}: {cmd[:200]}"


def _helper_processes() -> set[int]:
    """multiprocessing's resource tracker and fork server: started once (by a spawn) and kept
    for the whole process by the standard library, not a test's leak."""
    import sys

    pids = set()
    tracker = sys.modules.get("multiprocessing.resource_tracker")
    if tracker is not None:
        pids.add(getattr(tracker._resource_tracker, "_pid", None))
    server = sys.modules.get("multiprocessing.forkserver")
    if server is not None:
        pids.add(getattr(server._forkserver, "_forkserver_pid", None))
    return {p for p in pids if p is not None}


def _library_singletons() -> set:
    """Threads that third-party libraries start once and keep for the whole process (not a
    test's leak): zarr's I/O loop thread and its executors, dask's default thread pool,
    OpenVINO's telemetry sender."""
    import sys

    keep: set = set()
    executors = []
    zsync = sys.modules.get("zarr.core.sync")
    if zsync is not None:
        keep.update(t for t in zsync.iothread if t is not None)
        executors.append(zsync._executor)
        executors.extend(getattr(lp, "_default_executor", None) for lp in zsync.loop if lp is not None)
    dthreaded = sys.modules.get("dask.threaded")
    if dthreaded is not None:
        executors.append(dthreaded.default_pool)
    telemetry = sys.modules.get("openvino_telemetry.main")  # started by ``import openvino``
    if telemetry is not None:
        single = getattr(telemetry.Telemetry, "_SingletonMetaClass__single_instance", None)
        executors.append(getattr(getattr(single, "sender", None), "executor", None))
    for ex in executors:
        keep.update(getattr(ex, "_threads", ()))
    return keep


def _leftovers(what: str) -> Iterator[None]:
    """Fail ``what`` (a test, or a module's fixtures) if it leaves threads or child processes
    running a moment after its teardown; the processes are killed so they cannot spoil what
    runs next."""
    import threading
    import time

    threads = set(threading.enumerate())
    children = _child_pids()
    yield
    end = time.monotonic() + LEAK_GRACE_S
    # A thread Python did not start (Qt's thread pool running a dashboard worker that logged)
    # appears as a _DummyThread: it cannot be joined and always reads as alive, and its pool,
    # not the test, owns it.
    foreign = getattr(threading, "_DummyThread", ())
    new = [t for t in threading.enumerate() if t not in threads and not isinstance(t, foreign)]
    for t in [t for t in new if t not in _library_singletons()]:
        t.join(max(0.0, end - time.monotonic()))
    left = [t for t in new if t.is_alive() and t not in _library_singletons()]
    procs = _child_pids() - children - _helper_processes()
    while procs and time.monotonic() < end:
        time.sleep(0.05)
        procs &= _child_pids()
    problems = [f"thread {t.name!r} (daemon={t.daemon})" for t in left]
    for pid in sorted(procs):
        problems.append(f"child process {_describe_pid(pid)}")
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.kill(pid, signal.SIGKILL)
    if problems:
        pytest.fail(f"{what} left running: " + "; ".join(problems), pytrace=False)


@pytest.fixture(autouse=True)
def no_leaked_threads_or_processes() -> Iterator[None]:
    """A test must stop what it starts: a thread or child process still alive after its
    teardown would go on touching files, databases and the CPU under later tests."""
    yield from _leftovers("the test")


@pytest.fixture(autouse=True, scope="module")
def no_leaked_threads_or_processes_per_module() -> Iterator[None]:
    """The same for what a module's shared fixtures start (a daemon kept for several tests)."""
    yield from _leftovers("the module's fixtures")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared reference folder not found beside the repository ({SHARED})")
    return SHARED


@pytest.fixture(scope="session")
def real_fixtures(shared_dir: Path) -> Path:
    d = shared_dir / "fixtures" / "real"
    if not d.is_dir():
        pytest.skip("real instrument fixtures are absent from the shared folder")
    return d


@pytest.fixture()
def tiny_model(tmp_path: Path) -> Path:
    from nscmonitor.engines.tiny import build_tiny_classifier

    path = tmp_path / "models" / "tiny.onnx"
    build_tiny_classifier(path, input_size=32)
    return path


def write_tiff(path: Path, arr, **kw) -> Path:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, arr, **kw)
    return path


def stable_seed(*parts: object) -> int:
    """A seed from names and numbers that is the same in every run (``hash()`` of a string is
    salted per process, so images seeded with it change from run to run)."""
    return zlib.crc32(repr(parts).encode())


def csv_rows(path: Path) -> list[dict[str, str]]:
    """A CSV file's rows as dicts, the file closed again (a reader over an unclosed file
    leaves a ResourceWarning at garbage collection)."""
    import csv

    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def cells_image(seed: int, shape: tuple[int, int] = (96, 128), dtype: str = "uint16"):
    """A cheap textured frame (blobs on a background) so tiles are not dropped as empty."""
    import numpy as np

    rng = np.random.default_rng(seed)
    img = rng.normal(1000, 40, shape)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for _ in range(12):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(3, 9)
        img += 600 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return np.clip(img, 0, 4095).astype(dtype)


def stripes_image(seed: int, shape: tuple[int, int] = (64, 64), dtype: str = "uint16"):
    """A frame of vertical stripes: nothing like ``cells_image`` to a model's OOD score."""
    import numpy as np

    rng = np.random.default_rng(seed)
    xx = np.mgrid[: shape[0], : shape[1]][1]
    return (1000 + 500 * np.sin(xx / 10.0 + rng.uniform(0, 6.28)) + rng.normal(0, 20, shape)).astype(dtype)


def tiny_model_flagging_stripes(path: Path, shape: tuple[int, int] = (64, 64), n: int = 80) -> Path:
    """A tiny ONNX model (input 32) whose OOD threshold lies between the scores it gives
    ``cells_image`` frames and ``stripes_image`` frames of ``shape`` (seeds 0..n-1), measured
    here through the daemon's engine and preprocessing: cells are its own kind, stripes are
    flagged."""
    from nscmonitor.engines.ort import OrtCpuEngine
    from nscmonitor.engines.tiny import build_tiny_classifier
    from nscmonitor.scoring.preprocess import Preprocess

    meta = build_tiny_classifier(path, input_size=32, ood_threshold=0.0)
    engine = OrtCpuEngine(path, meta)
    engine.load()
    pre = Preprocess.from_metadata(meta)
    try:
        def score(img) -> float:
            return float(engine.infer_with_ood(pre.tiles(img).tiles)[1].mean())
        low = max(score(cells_image(stable_seed("cells", i), shape)) for i in range(n))
        high = min(score(stripes_image(i, shape)) for i in range(n))
    finally:
        engine.close()
    assert low < high, (low, high)  # the premise: this model's score tells the two kinds apart
    build_tiny_classifier(path, input_size=32, ood_threshold=(low + high) / 2)  # same seed, same weights
    return path


def settings_for(tmp_path: Path, watch: Path, db_url: str | None = None, **watch_kw):
    from nscmonitor.config import parse_settings

    db_url = db_url or f"sqlite:///{tmp_path / 'nsc.db'}"
    w = {"path": str(watch), "experiment": watch_kw.pop("experiment", "E1"), "quiet_seconds": 0.0,
         "rescan_interval": watch_kw.pop("rescan_interval", 60.0), **watch_kw}
    return parse_settings({"database_url": db_url, "models_dir": str(tmp_path / "models"),
                           "log_dir": str(tmp_path / "logs"), "watch": [w]}, env={})


@pytest.fixture()
def make_runner(tmp_path: Path, tiny_model: Path):
    """A real runner (real watchdog, real SQLite, real ONNX Runtime on a tiny model)."""
    from nscmonitor.daemon import build_runner

    runners = []

    def make(watch: Path, *, model: Path | None = None, db_url: str | None = None, **kw):
        runner_kw = {k: kw.pop(k) for k in ("retry_base_s", "max_attempts", "poll_interval", "heartbeat_s",
                                            "claim_size", "clock", "wall") if k in kw}
        runner_kw.setdefault("retry_base_s", 0.05)
        runner_kw.setdefault("poll_interval", 0.2)
        r = build_runner(settings_for(tmp_path, watch, db_url, **kw), model=model or tiny_model, **runner_kw)
        runners.append(r)
        return r

    yield make
    for r in runners:
        r.stop_event.set()


#: URL of a PostgreSQL role allowed to create databases and roles (``.ci/postgres.sh`` sets it)
PG_ENV = "NSCMONITOR_TEST_PG_URL"


def _libpq(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """The PostgreSQL leg needs a real server; without one it skips and says why."""
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"PostgreSQL leg: no server ({PG_ENV} is not set; .ci/run starts one with .ci/postgres.sh)")
    try:
        import psycopg
    except ImportError:
        pytest.skip("PostgreSQL leg: psycopg is not installed (pip install 'nscmonitor[postgres]')")
    from sqlalchemy.engine import make_url

    try:
        psycopg.connect(_libpq(url), connect_timeout=5).close()
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL leg: no server reachable at {make_url(url).render_as_string(hide_password=True)}: "
                    f"{str(exc).strip().splitlines()[0]}")
    return url


def pg_admin_exec(admin_url: str, *sql: str) -> None:
    """Statements that cannot run in a transaction (CREATE/DROP DATABASE), as the admin role."""
    import psycopg

    with psycopg.connect(_libpq(admin_url), autocommit=True) as c:
        for s in sql:
            c.execute(s)


@pytest.fixture()
def pg_url(pg_admin_url: str):
    """A fresh, empty PostgreSQL database for this test alone, dropped afterwards."""
    import uuid

    from sqlalchemy.engine import make_url

    name = f"nsct_{uuid.uuid4().hex[:16]}"
    pg_admin_exec(pg_admin_url, f'CREATE DATABASE "{name}" TEMPLATE template0')
    yield make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    pg_admin_exec(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store's URL on both backends: a SQLite file in the test's folder, or a fresh database
    on the real PostgreSQL server (that leg skips with the reason when none is reachable)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'nsc.db'}"
    return request.getfixturevalue("pg_url")


def with_pixel_limit(model: Path, ratio: float | None) -> None:
    """The model file's OOD record with (or, ``None``, without) ``max_pixel_size_ratio``, as
    training writes it (or as a model exported before the check has it)."""
    import json

    import onnx

    from nscmonitor.engines import read_onnx_metadata
    from nscmonitor.engines.metadata import ModelMetadata, write_onnx_metadata

    meta = json.loads(read_onnx_metadata(model).to_json())
    meta["ood"] = {k: v for k, v in meta["ood"].items() if k != "max_pixel_size_ratio"}
    if ratio is not None:
        meta["ood"]["max_pixel_size_ratio"] = ratio
    proto = onnx.load(str(model))
    write_onnx_metadata(proto, ModelMetadata.from_dict(meta))
    onnx.save(proto, str(model))


@pytest.fixture()
def skewed_int8(tmp_path):
    """A tiny model whose nearest int8 rounding loses the same amount on every tile, with its
    calibration and held-out tiles (``blob_tiles.skewed_model``)."""
    from blob_tiles import skewed_model

    return skewed_model(tmp_path)
