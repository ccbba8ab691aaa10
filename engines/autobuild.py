"""Build on arrival: every model gets the fastest certified engine this machine has, with no
command typed by anyone.

Why a separate lifecycle: an engine is only worth serving once it is gated against the fp32
ONNX on the model's own held-out tiles, and a build takes from seconds (tiny models) to many
minutes (ResNet50 int8, TensorRT). So registering, training, retraining, activating a model
and a daemon start that finds no engine here all call :func:`ensure`, which starts
``nscmonitor engine autobuild MODEL`` in a subprocess at lower priority and returns at once
(or waits, for the command line, whose terminal shows the child's progress bar). The daemon
meanwhile scores with what it has (fp32) and hot-swaps the engine between batches once the
build has passed its gate.

The outcome is kept in ``engine-status.json`` beside the model (written atomically): state,
engine name (backend and precision, e.g. ``openvino-int8``), gate numbers, build time, or the
reason it failed, and the *fingerprint* it was built under: model hash, calibration set hash,
runtime versions and this machine's CPU/GPU. A failed build is retried only when that
fingerprint changes, so a model whose int8 copy cannot pass the gate is not rebuilt every few
seconds, yet an upgrade of ONNX Runtime, a new calibration set or a move to another machine
tries again. One status file per model folder: several machines sharing one models folder
would take turns rebuilding (each sees the other's machine key), so such sites should give
each daemon its own ``models_dir``.

Only one build per model runs at a time: the child holds an OS lock on
``engine-build.lock`` for the whole build (released by the OS if it dies), which is also how
other processes tell a running build from a stale ``building`` record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from nscmonitor.engines.base import EngineError

log = logging.getLogger(__name__)

STATUS_NAME = "engine-status.json"
LOCK_NAME = "engine-build.lock"
LOG_NAME = "engine-build.log"
STATES = ("building", "ready", "failed", "no-calibration")
NO_CALIBRATION = ("the model has no calibration set, so no int8 engine can be certified; it is served in fp32 "
                  "(give it one: 'nscmonitor models register MODEL --calibration DIR')")
#: engine preferences under which building an int8/TensorRT engine would be wasted work
NO_BUILD_PREFERENCES = ("ort-cpu", "ort-fp32", "ort-cpu-fp32", "torch", "ort-cuda", "openvino-fp32")


@dataclass(frozen=True)
class Fingerprint:
    """Everything a build's outcome depends on; a new fingerprint means "try again"."""

    model_sha256: str
    calibration_sha256: str | None
    runtimes: dict[str, str | None]
    machine: str

    def changes(self, other: "Fingerprint | dict | None") -> list[str]:
        """What differs from ``other`` (an earlier build's fingerprint), in words."""
        if other is None:
            return ["no earlier build"]
        old = other if isinstance(other, dict) else asdict(other)
        new = asdict(self)
        names = {"model_sha256": "model", "calibration_sha256": "calibration set", "runtimes": "runtime versions",
                 "machine": "machine"}
        return [names[k] for k in new if new[k] != old.get(k)]


@dataclass(frozen=True)
class EngineStatus:
    state: str
    fingerprint: dict[str, Any]
    target: str = ""
    engine: str | None = None
    precision: str | None = None
    artefact: str | None = None
    gate: dict[str, Any] | None = None
    attempts: tuple[dict[str, Any], ...] = ()
    reason: str | None = None
    build_seconds: float | None = None
    started_at: str | None = None
    finished_at: str | None = None
    calibration_source: str | None = None
    calibration_dir: str | None = None
    pid: int | None = None
    #: ONNX Runtime fp32 and int8 tiles/s here, measured when ort-int8 would serve: slower than
    #: fp32, it does not (ONNX Runtime's x86 kernels can be slow on signed int8 activations)
    ort_speed: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["attempts"] = list(self.attempts)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EngineStatus":
        known = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in d.items() if k in known}
        if kw.get("state") not in STATES or not isinstance(kw.get("fingerprint"), dict):
            raise ValueError(f"not an engine status record: state {kw.get('state')!r}")
        kw["attempts"] = tuple(kw.get("attempts") or ())
        return cls(**kw)


# --- where things live --------------------------------------------------------------------
def status_path(model_path: str | Path) -> Path:
    return Path(model_path).parent / STATUS_NAME


def lock_path(model_path: str | Path) -> Path:
    return Path(model_path).parent / LOCK_NAME


def log_path(model_path: str | Path) -> Path:
    return Path(model_path).parent / LOG_NAME


def read_status(model_path: str | Path) -> EngineStatus | None:
    """The recorded outcome, or None when there is none or it is unreadable (a torn or
    hand-edited file means "build again", never a crash of the caller)."""
    path = status_path(model_path)
    try:
        return EngineStatus.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("%s: unreadable engine status (%s); it will be rebuilt", path, exc)
        return None


def write_status(model_path: str | Path, status: EngineStatus) -> Path:
    path = status_path(model_path)
    tmp = path.with_name(path.name + f".{os.getpid()}.part")
    tmp.write_text(json.dumps(status.to_dict(), indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
    return path


# --- the fingerprint ----------------------------------------------------------------------
_HASHES: dict[tuple[str, int, int], str] = {}


def cached_sha256(path: str | Path) -> str:
    """File hash, remembered per (path, size, mtime): the daemon asks at every heartbeat and a
    ResNet50 ONNX is 100 MB."""
    from nscmonitor.engines.enginefile import file_sha256

    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = file_sha256(p)
    return _HASHES[key]


def _dist_version(*names: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    for n in names:
        try:
            return f"{n} {version(n)}"
        except PackageNotFoundError:
            continue
    return None


@lru_cache(maxsize=1)
def runtime_versions() -> dict[str, str | None]:
    """Installed runtime versions, read from package metadata (importing them would cost
    seconds and, for TensorRT, a CUDA context). Read once per process: a runtime upgraded
    under a running daemon only takes effect at its restart anyway."""
    return {"onnxruntime": _dist_version("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
            "openvino": _dist_version("openvino"), "tensorrt": _dist_version("tensorrt", "tensorrt-cu12",
                                                                             "tensorrt-cu13")}


@lru_cache(maxsize=1)
def gpu_names() -> tuple[str, ...]:
    """NVIDIA GPUs as the driver names them; empty without a driver. Asked of nvidia-smi so
    that no CUDA library is loaded into the daemon."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.info("nvidia-smi did not answer (%s); treating this machine as CPU-only", exc)
        return ()
    return tuple(line.strip() for line in out.stdout.splitlines() if line.strip()) if out.returncode == 0 else ()


@lru_cache(maxsize=1)
def machine_id() -> str:
    import platform

    from nscmonitor.engines.ort import _cpu_id

    gpus = gpu_names()
    return f"{platform.system()} {platform.machine()} | {_cpu_id()}" + (f" | {', '.join(gpus)}" if gpus else "")


def calibration_sha256(model_path: str | Path, calibration_dir: str | Path | None = None) -> str | None:
    """Hash of the model's own calibration set (``calibration.npz`` beside it), else of an
    explicitly given tiles folder's table; None when there is neither."""
    own = _model_tiles_path(model_path)
    if own is not None and own.is_file():
        return cached_sha256(own)
    if calibration_dir is not None and (Path(calibration_dir) / "tiles.csv").is_file():
        return "tiles.csv:" + cached_sha256(Path(calibration_dir) / "tiles.csv")
    return None


def _model_tiles_path(model_path: str | Path) -> Path | None:
    from nscmonitor.engines import calibration

    fn = getattr(calibration, "model_tiles_path", None)
    return Path(fn(Path(model_path))) if fn is not None else None


def fingerprint(model_path: str | Path, *, calibration_dir: str | Path | None = None) -> Fingerprint:
    return Fingerprint(cached_sha256(model_path), calibration_sha256(model_path, calibration_dir),
                       dict(runtime_versions()), machine_id())


# --- what to build ------------------------------------------------------------------------
def has_tensorrt_gpu() -> bool:
    import importlib.util

    from nscmonitor.engines.tensorrt import trt_disabled

    return bool(gpu_names()) and importlib.util.find_spec("tensorrt") is not None and not trt_disabled()


def has_openvino() -> bool:
    import importlib.util

    from nscmonitor.engines.openvino import openvino_disabled

    return importlib.util.find_spec("openvino") is not None and not openvino_disabled()


def plan(*, tensorrt_gpu: bool, openvino: bool) -> tuple[str, ...]:
    """Engines to try, best first (the selection order of ``engines.select``). The CPU int8
    model is always built first because TensorRT's int8 engine is parsed from its Q/DQ graph;
    the best engine that passes its gate is the one served."""
    cpu = "openvino-int8" if openvino else "ort-int8"
    return ("tensorrt-int8", "tensorrt-fp16", cpu) if tensorrt_gpu else (cpu,)


def decide(status: EngineStatus | None, current: Fingerprint, *, artefact_present: bool, build_running: bool) -> str:
    """What to do about one model here: ``build``, ``wait`` (a build runs), ``ready`` or
    ``keep`` (an earlier attempt failed under this very fingerprint: retrying would fail the
    same way, so the current engine stays until something changes)."""
    if build_running:
        return "wait"
    if status is None or current.changes(status.fingerprint):
        return "build"
    if status.state == "ready":
        return "ready" if artefact_present else "build"
    if status.state in ("failed", "no-calibration"):
        return "keep"
    return "build"  # a "building" record with no build running: the builder died


def artefact_present(model_path: str | Path, status: EngineStatus | None) -> bool:
    return bool(status and status.artefact and (Path(model_path).parent / status.artefact).exists())


# --- the lock -----------------------------------------------------------------------------
class BuildLock:
    """An OS-level exclusive lock on a file: released by the OS when the holder exits or dies,
    so a killed build never blocks the next one (a pid in a file would be reused)."""

    def __init__(self, path: str | Path, *, probe: bool = False) -> None:
        self.path = Path(path)
        self.probe = probe  # only asking whether someone holds it: read access is enough (the dashboard's)
        self._fh = None

    def acquire(self) -> bool:
        if not self.probe:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "r" if self.probe else "a+")
        try:
            if sys.platform == "win32":
                import msvcrt

                fh.seek(0)
                msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            return False
        self._fh = fh
        return True

    def release(self) -> None:
        if self._fh is None:
            return
        try:
            if sys.platform == "win32":
                import msvcrt

                self._fh.seek(0)
                msvcrt.locking(self._fh.fileno(), msvcrt.LK_UNLCK, 1)
            else:
                import fcntl

                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
        finally:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "BuildLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def build_running(model_path: str | Path) -> bool:
    """True while some process (this one or another) holds the model's build lock. Needs only
    read access, so a dashboard on a read-only data folder can ask too."""
    lock = BuildLock(lock_path(model_path), probe=True)
    try:
        if lock.acquire():
            lock.release()
            return False
    except FileNotFoundError:
        return False
    return True


# --- the build itself (runs in the child process) -------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


Progress = Callable[[str], None]


@dataclass
class _Tiles:
    calib: Any
    heldout: Any
    source: str
    sha256: str | None
    calibration_dir: str | None = None


def load_tiles_for(model_path: Path, meta: Any, calibration_dir: str | Path | None) -> _Tiles | None:
    """The model's own calibration set (part of the version folder), else an explicitly given
    tiles folder; None when the model has neither (it is then served fp32, and says why)."""
    from nscmonitor.engines import calibration

    loader = getattr(calibration, "load_model_tiles", None)
    if loader is not None:
        own = loader(model_path, meta)
        if own is not None:
            return _Tiles(own.calib, own.heldout, str(_model_tiles_path(model_path)), own.sha256)
    if calibration_dir is not None:
        calib, held = calibration.calibration_and_heldout(calibration_dir, meta)
        return _Tiles(calib, held, str(calibration_dir), calibration_sha256(model_path, calibration_dir),
                      str(Path(calibration_dir).resolve()))
    return None


@dataclass
class Attempt:
    engine: str
    passed: bool
    artefact: str | None = None
    gate: dict[str, Any] | None = None
    reason: str | None = None
    seconds: float = 0.0


def _cpu_int8(model_path: Path, tiles: _Tiles, want_openvino: bool, threads: int,
              detail: Any = None) -> list[Attempt]:
    """The int8 Q/DQ model, gated on ONNX Runtime and (when installed) on OpenVINO, whose int8
    kernels round differently and so need their own pass. When the plain recipe fails the
    gate of the runtime that would serve it, ``engines.mixed_precision`` keeps the most
    sensitive layer groups in fp32 (``detail`` gets its steps) and the model is gated again;
    the groups kept are part of both gate records."""
    from nscmonitor.engines.metadata import read_onnx_metadata
    from nscmonitor.engines.mixed_precision import build_int8

    t0 = time.monotonic()
    path, report, search = build_int8(model_path, tiles.calib, tiles.heldout, want_openvino=want_openvino,
                                      threads=threads, progress=detail)
    seconds = time.monotonic() - t0
    kept = {"kept_fp32": list(report.kept_fp32)} if report.kept_fp32 else {}
    ort = Attempt("ort-int8", path is not None and report.passed, path.name if path else None, report.to_dict(),
                  None if report.passed else "; ".join(report.reasons), seconds)
    if path is None or not want_openvino:
        return [ort]
    ov_gate = (read_onnx_metadata(path).extra.get("int8") or {}).get("openvino_gate")
    ov_gate = {**ov_gate, **kept} if ov_gate else ov_gate
    ov = Attempt("openvino-int8", bool(ov_gate and ov_gate.get("passed")), path.name, ov_gate,
                 None if ov_gate and ov_gate.get("passed") else
                 ("; ".join(ov_gate.get("reasons") or ()) if ov_gate else "OpenVINO could not run the int8 model"),
                 seconds)
    return [ov, ort]


def _tensorrt(model_path: Path, tiles: _Tiles, precision: str) -> Attempt:
    from nscmonitor.engines.build import BuildOptions, build_trt_engine, default_cache_dir

    t0 = time.monotonic()
    path, report = build_trt_engine(model_path, tiles.heldout, opts=BuildOptions(precision=precision),
                                    cache_dir=default_cache_dir(model_path), calib=tiles.calib)
    seconds = time.monotonic() - t0
    name = f"tensorrt-{precision}"
    if path is None:
        return Attempt(name, False, None, report.to_dict() if report else None,
                       "; ".join(report.reasons) if report else "no engine", seconds)
    rel = os.path.relpath(path, model_path.parent)
    return Attempt(name, True, rel, report.to_dict() if report else {"passed": True, "note": "from the cache"},
                   None, seconds)


def run_build(model_path: str | Path, *, calibration_dir: str | Path | None = None, threads: int = 0,
              progress: Progress | None = None, targets: tuple[str, ...] | None = None,
              detail: Callable[[int, int, str], None] | None = None) -> EngineStatus:
    """Build, gate and record the best engine for this machine; returns the recorded status.

    Every engine in :func:`plan` is tried, best first, until one passes; each attempt's gate
    (or failure) is kept in the status so ``status``/``doctor`` can say why the GPU or int8 is
    not used. Errors of a backend (a TensorRT that cannot parse the graph, a quantizer bug)
    are recorded as that attempt's reason and the next backend is tried. ``detail`` gets the
    steps of a mixed-precision search (done, total, what), when one runs."""
    from nscmonitor.engines.metadata import MetadataError, read_onnx_metadata

    model_path = Path(model_path)
    say = progress or (lambda msg: None)
    fp = fingerprint(model_path, calibration_dir=calibration_dir)
    targets = targets or plan(tensorrt_gpu=has_tensorrt_gpu(), openvino=has_openvino())
    started = _now()
    base = EngineStatus("building", asdict(fp), target=targets[0], started_at=started, pid=os.getpid())
    write_status(model_path, base)
    t0 = time.monotonic()
    try:
        meta = read_onnx_metadata(model_path)
        say("loading the calibration and held-out tiles")
        tiles = load_tiles_for(model_path, meta, calibration_dir)
    except (EngineError, MetadataError, OSError, ValueError) as exc:
        return _finish(model_path, replace(base, state="failed", reason=f"cannot read the calibration set: {exc}"), t0)
    if tiles is None:
        return _finish(model_path, replace(base, state="no-calibration", reason=NO_CALIBRATION), t0)
    base = replace(base, calibration_source=tiles.source, calibration_dir=tiles.calibration_dir)
    attempts: list[Attempt] = []
    cpu_target = targets[-1]
    say(f"quantising to int8 and gating against fp32 on {len(tiles.heldout)} held-out tiles")
    try:
        attempts += _cpu_int8(model_path, tiles, cpu_target == "openvino-int8", threads, detail)
    except Exception as exc:  # a backend's failure is this attempt's outcome, not the build's end
        log.exception("int8 build of %s failed", model_path)
        attempts.append(Attempt(cpu_target, False, reason=f"int8 build failed: {exc}"))
    for precision in ("int8", "fp16"):
        if f"tensorrt-{precision}" not in targets:
            continue
        say(f"building the TensorRT {precision} engine and gating it")
        try:
            attempts.append(_tensorrt(model_path, tiles, precision))
        except Exception as exc:  # TensorRT errors come in many types; record and go on
            log.exception("TensorRT %s build of %s failed", precision, model_path)
            attempts.append(Attempt(f"tensorrt-{precision}", False, reason=f"TensorRT build failed: {exc}"))
        if attempts[-1].passed:
            break
    order = {name: i for i, name in enumerate(("tensorrt-int8", "tensorrt-fp16", "openvino-int8", "ort-int8"))}
    passed = sorted((a for a in attempts if a.passed), key=lambda a: order.get(a.engine, 99))
    records = tuple({"engine": a.engine, "passed": a.passed, "gate": a.gate, "reason": a.reason,
                     "seconds": round(a.seconds, 2)} for a in attempts)
    if not passed:
        why = "; ".join(f"{a.engine}: {a.reason}" for a in attempts) or "nothing could be built"
        return _finish(model_path, replace(base, state="failed", attempts=records,
                                           reason=f"no engine passed its gate, fp32 serves ({why})"), t0)
    best = passed[0]
    if best.engine == "ort-int8":
        say("timing ONNX Runtime int8 against fp32 on this machine")
        speed = _ort_speeds(model_path, model_path.parent / best.artefact, tiles.heldout.x, threads)
        base = replace(base, ort_speed=speed)
        if slower_than_fp32(speed):
            note = (f"ort-int8 passed its gate but runs slower than fp32 here ({speed['int8_tiles_per_s']:.1f} vs "
                    f"{speed['fp32_tiles_per_s']:.1f} tiles/s)")
            return _finish(model_path, replace(base, state="failed", attempts=records,
                                               reason=f"{note}, so fp32 serves"), t0)
    return _finish(model_path, replace(base, state="ready", engine=best.engine, precision=best.engine.rsplit("-", 1)[1],
                                       artefact=best.artefact, gate=best.gate, attempts=records), t0)


def slower_than_fp32(speed: dict[str, float], margin: float = 0.9) -> bool:
    """int8 only serves if it is at least about as fast as fp32: below ``margin`` of fp32's
    throughput it would make the daemon slower for no gain (differences under ~10 % are
    noise on a shared machine, DESIGN §6)."""
    return speed["int8_tiles_per_s"] < margin * speed["fp32_tiles_per_s"]


def _ort_speeds(model_path: Path, int8_path: Path, x: Any, threads: int, min_seconds: float = 1.5) -> dict[str, float]:
    """Tiles/s of the fp32 and the int8 model on ONNX Runtime, sessions loaded and warmed up
    first (session start is not what the daemon pays per batch)."""
    from nscmonitor.engines.metadata import read_onnx_metadata
    from nscmonitor.engines.ort import OrtCpuEngine

    out = {}
    for key, path in (("fp32_tiles_per_s", model_path), ("int8_tiles_per_s", int8_path)):
        engine = OrtCpuEngine(path, read_onnx_metadata(path), threads=threads)
        engine.load()
        try:
            engine.infer(x[:8])
            n, t0 = 0, time.perf_counter()
            while n < len(x) or time.perf_counter() - t0 < min_seconds:
                batch = x[n % len(x):n % len(x) + 8]
                engine.infer(batch)
                n += len(batch)
            out[key] = round(n / (time.perf_counter() - t0), 1)
        finally:
            engine.close()
    return out


def ort_int8_refusal(model_path: str | Path) -> str | None:
    """Why ONNX Runtime's int8 model should not serve this model here, from the build's own
    timing (None when it was not found slower, or no build recorded it)."""
    st = read_status(model_path)
    if st is None or not st.ort_speed or st.fingerprint.get("model_sha256") != cached_sha256(model_path) \
            or not slower_than_fp32(st.ort_speed):
        return None
    s = st.ort_speed
    return (f"ONNX Runtime int8 runs slower than fp32 on this machine ({s['int8_tiles_per_s']:.1f} vs "
            f"{s['fp32_tiles_per_s']:.1f} tiles/s, measured by its build)")


def _finish(model_path: Path, status: EngineStatus, t0: float) -> EngineStatus:
    status = replace(status, build_seconds=round(time.monotonic() - t0, 2), finished_at=_now(), pid=None)
    write_status(model_path, status)
    (log.info if status.state == "ready" else log.warning)("engine build for %s: %s", model_path, describe(status))
    return status


# --- starting builds ------------------------------------------------------------------------
def build_command(model_path: str | Path, *, calibration_dir: str | Path | None = None,
                  threads: int = 0) -> list[str]:
    cmd = [sys.executable, "-m", "nscmonitor", "engine", "autobuild", str(model_path)]
    if calibration_dir is not None:
        cmd += ["--calibration", str(calibration_dir)]
    if threads:
        cmd += ["--threads", str(threads)]
    return cmd


def _low_priority() -> dict[str, Any]:
    """Builds must not starve the daemon's scoring: nice 10 on POSIX, BELOW_NORMAL on Windows."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.BELOW_NORMAL_PRIORITY_CLASS}
    return {"preexec_fn": lambda: os.nice(10)}


def spawn(model_path: str | Path, *, wait: bool, calibration_dir: str | Path | None = None,
          threads: int = 0) -> subprocess.Popen | int:
    """Start the build subprocess. ``wait``: inherit the terminal (its progress bar shows)
    and return the exit code; else detach with output to ``engine-build.log`` beside the
    model and return the process."""
    cmd = build_command(model_path, calibration_dir=calibration_dir, threads=threads)
    if wait:
        return subprocess.run(cmd, **_low_priority()).returncode
    logf = open(log_path(model_path), "ab")
    try:
        return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=sys.platform != "win32", **_low_priority())
    finally:
        logf.close()


def wants_build(preference: str) -> bool:
    from nscmonitor.engines.select import ALIASES

    return ALIASES.get(preference, preference) not in NO_BUILD_PREFERENCES


def needed(model_path: str | Path, calibration_dir: str | Path | None = None) -> tuple[str, str | Path | None]:
    """(:func:`decide`'s action for this model here, the calibration folder to build with)."""
    model_path = Path(model_path)
    status = read_status(model_path)
    cal = calibration_dir or (status.calibration_dir if status else None)
    action = decide(status, fingerprint(model_path, calibration_dir=cal),
                    artefact_present=artefact_present(model_path, status), build_running=build_running(model_path))
    return action, cal


def _recorded_no_calibration(model_path: Path, cal: str | Path | None) -> bool:
    """A model with nothing to calibrate with gets its record at once, without a child."""
    fp = fingerprint(model_path, calibration_dir=cal)
    if fp.calibration_sha256 is not None:
        return False
    write_status(model_path, EngineStatus("no-calibration", asdict(fp), target=plan(
        tensorrt_gpu=has_tensorrt_gpu(), openvino=has_openvino())[0], reason=NO_CALIBRATION,
        started_at=_now(), finished_at=_now(), build_seconds=0.0))
    return True


def start(model_path: str | Path, *, threads: int = 0) -> subprocess.Popen | None:
    """Start a background build when this model has no current engine outcome here; returns
    the process (for the caller to reap) or None when nothing had to start."""
    action, cal = needed(model_path)
    if action != "build" or _recorded_no_calibration(model_path, cal):
        return None
    log.info("no engine for %s on this machine: building one in the background (log: %s)", model_path,
             log_path(model_path))
    return spawn(model_path, wait=False, calibration_dir=cal, threads=threads)


def ensure(model_path: str | Path, *, calibration_dir: str | Path | None = None, threads: int = 0,
           quiet: bool = False, timeout: float | None = None) -> EngineStatus | None:
    """Build and wait: the command line's trigger (the child's progress bar shows in this
    terminal) and scheduled retraining's (``quiet``: output to ``engine-build.log``; with a
    ``timeout``, after which the build is stopped, so a hung build cannot hold the retrain
    job, and with it every later retrain, for ever). Waits for a build already running
    instead of starting a second; returns the recorded outcome."""
    model_path = Path(model_path)
    action, cal = needed(model_path, calibration_dir)
    deadline = None if timeout is None else time.monotonic() + timeout
    if action == "wait":
        log.info("an engine build for %s is already running; waiting for it", model_path)
        while build_running(model_path):
            if deadline is not None and time.monotonic() > deadline:
                log.warning("the engine build for %s still runs after %.0f s; not waiting longer", model_path, timeout)
                break
            time.sleep(0.5)
    elif action == "build" and not _recorded_no_calibration(model_path, cal):
        if quiet:
            proc = spawn(model_path, wait=False, calibration_dir=cal, threads=threads)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("the engine build for %s took longer than %.0f s; stopped", model_path, timeout)
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        else:
            spawn(model_path, wait=True, calibration_dir=cal, threads=threads)
    return read_status(model_path)


# --- saying what happened ----------------------------------------------------------------
def gate_text(gate: dict[str, Any] | None) -> str:
    from nscmonitor.engines.validate import kept_text

    if not gate or "top1_agreement" not in gate:
        return ""
    return (f"top-1 agreement {gate['top1_agreement']:.2%}, well readout within {gate.get('well_readout_pp', 0):.2f} pp"
            + kept_text(gate.get("kept_fp32")))


def describe(status: EngineStatus | None, version: str | None = None) -> str:
    """One line for status, doctor, models show and the dashboard."""
    of = f" for {version}" if version else ""
    if status is None:
        return f"no engine built{of} on this machine yet"
    if status.state == "building":
        return f"building {status.target}{of} since {status.started_at}; scoring goes on with the engine in use"
    if status.state == "ready":
        secs = f", built in {status.build_seconds:.0f} s" if status.build_seconds is not None else ""
        gate = gate_text(status.gate)
        return f"{status.engine}{of} ready ({gate}{secs})" if gate else f"{status.engine}{of} ready{secs}"
    return f"no int8 engine{of}: {status.reason}"


def summary(model_path: str | Path, version: str | None = None) -> dict[str, Any]:
    """The engine build record as plain data for ``status --json`` and ``models show``."""
    st = read_status(model_path)
    running = build_running(model_path)
    out: dict[str, Any] = {"state": "building" if running else (st.state if st else "none"),
                           "message": describe(st, version)}
    if running and (st is None or st.state != "building"):  # started, its record not written yet
        out["message"] = f"building an engine{' for ' + version if version else ''} on this machine; scoring " \
                         "goes on with the engine in use"
    if st is not None:
        out.update({k: v for k, v in st.to_dict().items() if k in (
            "engine", "precision", "gate", "reason", "build_seconds", "started_at", "finished_at", "target")})
        if st.state == "building" and not running:
            out["state"] = "interrupted"
            out["message"] = f"the build{' for ' + version if version else ''} started {st.started_at} was interrupted; " \
                             "it is retried at the next trigger"
    return out


def token(model_path: str | Path) -> str | None:
    """Identity of the engine built here for this model: changes exactly when a new build
    has passed its gate, which is when the daemon should reselect its engine."""
    st = read_status(model_path)
    if st is None or st.state != "ready":
        return None
    return f"{st.engine}@{st.finished_at}:{hashlib.sha1(json.dumps(st.fingerprint, sort_keys=True).encode()).hexdigest()[:8]}"


def copy_artefacts(src_model: str | Path, dest_dir: str | Path) -> bool:
    """Copy an engine built beside a training run's ``model.onnx`` (and its status) into the
    registry's version folder, so registering what ``nscmonitor train`` just built does not
    build it again; the copied status is checked against the copy's fingerprint as usual.
    Only for run folders (``model.onnx``): other names would not match the files' names."""
    from nscmonitor.engines.build import default_cache_dir
    from nscmonitor.engines.ort import int8_path_for

    src_model, dest_dir = Path(src_model), Path(dest_dir)
    if src_model.name != "model.onnx" or not status_path(src_model).is_file():
        return False
    int8 = int8_path_for(src_model)
    for p in (int8, int8.with_name(int8.name + ".gate.json"), status_path(src_model)):
        if p.is_file():
            shutil.copy2(p, dest_dir / p.name)
    if default_cache_dir(src_model).is_dir():
        shutil.copytree(default_cache_dir(src_model), dest_dir / default_cache_dir(src_model).name,
                        dirs_exist_ok=True)
    return True
