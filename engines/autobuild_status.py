"""The record of an engine build beside its model: ``engine-status.json`` (state, engine,
gate numbers, the fingerprint it was built under), the build lock that tells a running build
from a stale record, and the words status, doctor and the dashboard show for it.

Kept apart from the build (``autobuild_run``) and from starting builds (``autobuild``): the
daemon, the dashboard and the command line read these records at every heartbeat without
loading any quantiser or runtime.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from nscmonitor.engines.openvino import PRECISION_TEXT, PRECISIONS

# the logger of build-on-arrival as a whole, as before these records had a module of their own
log = logging.getLogger("nscmonitor.engines.autobuild")

STATUS_NAME = "engine-status.json"
LOCK_NAME = "engine-build.lock"
LOG_NAME = "engine-build.log"
STATES = ("building", "ready", "failed", "no-calibration")
NO_CALIBRATION = ("the model has no calibration set, so no int8 engine can be certified; it is served in fp32 "
                  "(give it one: 'nscmonitor models register MODEL --calibration DIR')")


#: the build's own choices (how layers are grouped for mixed precision, which engines are timed
#: against fp32): raised when they change, so an install upgraded in place builds again instead
#: of keeping an outcome the new code would not reach. 2: blocks found under the export wrapper,
#: OpenVINO's int8 timed too; 3: int8 and fp32 timed in alternating rounds, medians; 4: OpenVINO
#: gated and timed at a fixed batch, and in bf16 for the non-int8 layers where the CPU has it;
#: 5: the CPU int8 file with unsigned activations, TensorRT's signed file apart; 6: the
#: mixed-precision search scores pseudo-wells of the gate's well size; 7: a search that keeps
#: nothing fp32 after the plain file failed its gate hands over to a tighter margin (6 ended
#: the ladder there and served fp32); 8: one rounding per layer instead of two (the CPU int8
#: file folds each ReLU into its input's rounding, TensorRT's leaves layer outputs unrounded);
#: 9: int8 weights rounded against each layer's input statistics (GPTQ) instead of to the nearest step;
#: 10: the gate's readout is the part a well's tiles share, tile noise gated apart (``engines.validate``);
#: 11: OpenVINO also gated and timed with bf16 for the stem and the OOD products only (``bf16-stem``);
#: 12: the fp32 model in bf16 on OpenVINO (``openvino-bf16``) gated and timed beside the int8
#: engines, and the fastest certified CPU engine serves (was: the first not slower than fp32);
#: 13: OpenVINO runs float convolutions of outputs a few pixels wide on the tiles side by side
#: (``openvino_graph.small_maps_as_one_image``), so every OpenVINO engine is gated again as compiled;
#: the large request is also timed as two parallel requests of half its tiles (``_large_streams``);
#: 14: OpenVINO runs channel means as global average pools and the OOD head's wide distances as
#: products (``openvino_graph.channel_means_as_pools``, ``distances_as_products``), gated again as compiled.
RECIPE = "14"


@dataclass(frozen=True)
class Fingerprint:
    """Everything a build's outcome depends on; a new fingerprint means "try again"."""

    model_sha256: str
    calibration_sha256: str | None
    runtimes: dict[str, str | None]
    machine: str
    recipe: str = RECIPE

    def changes(self, other: "Fingerprint | dict | None") -> list[str]:
        """What differs from ``other`` (an earlier build's fingerprint), in words."""
        if other is None:
            return ["no earlier build"]
        old = other if isinstance(other, dict) else asdict(other)
        new = asdict(self)
        names = {"model_sha256": "model", "calibration_sha256": "calibration set", "runtimes": "runtime versions",
                 "machine": "machine", "recipe": "engine build recipe"}
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
    #: ONNX Runtime fp32 and int8 tiles/s here, measured when ort-int8 passed its gate: slower
    #: than fp32, ``select`` in auto mode does not serve it (ONNX Runtime's x86 kernels can be
    #: slow on signed int8 activations)
    ort_speed: dict[str, Any] | None = None
    #: the same for OpenVINO's int8 (a small network on a CPU without AMX can lose to fp32: its
    #: quantise/dequantise steps cost more than its convolutions save)
    openvino_speed: dict[str, Any] | None = None
    #: the same for the fp32 model in bf16 on OpenVINO (``bf16_tiles_per_s``; CPUs with bf16 units)
    openvino_bf16_speed: dict[str, Any] | None = None
    #: engines the build is still trying while this record's engine, already gated and timed,
    #: serves (a "ready" record written before the build's end); empty in a build's final record
    pending: tuple[str, ...] = ()
    #: a failed record whose failure was this machine's (a full disk, no permission, too little
    #: memory: ``autobuild_run.environmental``), not the model's: retried at the next trigger
    transient: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["attempts"] = list(self.attempts)
        d["pending"] = list(self.pending)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EngineStatus":
        known = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in d.items() if k in known}
        if kw.get("state") not in STATES or not isinstance(kw.get("fingerprint"), dict):
            raise ValueError(f"not an engine status record: state {kw.get('state')!r}")
        for name in SPEED_FIELDS.values():  # selection reads them: a hand-edited one means rebuild
            speed = kw.get(name)
            if speed is not None and not (isinstance(speed, dict) and all(
                    isinstance(speed.get(k), (int, float)) and math.isfinite(speed[k]) and speed[k] > 0
                    for k in ("fp32_tiles_per_s", SPEED_KEYS[name]))):
                raise ValueError(f"{name} is not two positive tiles/s figures: {speed!r}")
            if speed is not None and speed.get("precision", "f32") not in PRECISIONS:
                raise ValueError(f"{name} names an unknown precision: {speed.get('precision')!r}")
            if speed is not None and not all(  # the large request's timing and size, read by selection too
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                    for k, v in speed.items() if k.endswith("_tiles_per_s") or k == "large_batch"):
                raise ValueError(f"{name} holds a timing or batch that is not a positive number: {speed!r}")
            if speed is not None and not all(type(v) is int and v in (1, 2)
                                             for k, v in speed.items() if k.endswith("_large_streams")):
                raise ValueError(f"{name} names a number of parallel large requests other than 1 or 2: {speed!r}")
        kw["attempts"] = tuple(kw.get("attempts") or ())
        pending = kw.get("pending") or ()
        if not isinstance(pending, (list, tuple)) or not all(isinstance(p, str) for p in pending):
            raise ValueError(f"pending is not a list of engine names: {pending!r}")
        kw["pending"] = tuple(pending)
        if not isinstance(kw.get("transient", False), bool):
            raise ValueError(f"transient is not true or false: {kw['transient']!r}")
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
    versions = {"onnxruntime": _dist_version("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
                "openvino": _dist_version("openvino"), "tensorrt": _dist_version("tensorrt", "tensorrt-cu12",
                                                                                 "tensorrt-cu13")}
    if gpu_names():  # torch serves the GPU where TensorRT is missing (engines.torch_cuda); CPUs never build with it
        versions["torch"] = _dist_version("torch")
    return versions


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

    from nscmonitor.engines.ort import cpu_id

    gpus = gpu_names()
    return f"{platform.system()} {platform.machine()} | {cpu_id()}" + (f" | {', '.join(gpus)}" if gpus else "")


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


# --- saying what happened ----------------------------------------------------------------
def gate_text(gate: dict[str, Any] | None) -> str:
    from nscmonitor.engines.validate import kept_text, readout_text

    if not gate or "top1_agreement" not in gate:
        return ""
    ood = ""
    if all(isinstance(gate.get(k), (int, float)) for k in ("ood_threshold", "ood_threshold_reference")):
        ood = f", OOD threshold {gate['ood_threshold']:.4g} (fp32 {gate['ood_threshold_reference']:.4g})"
    return (f"top-1 agreement {gate['top1_agreement']:.2%}, {readout_text(gate)}"
            + kept_text(gate.get("kept_fp32")) + ood)


def build_attempt(model_path: str | Path, name: str) -> dict[str, Any] | None:
    """Engine ``name``'s attempt in this model's last build record (None: no record, or that
    build did not try it)."""
    st = read_status(model_path)
    return next((a for a in st.attempts if a.get("engine") == name), None) if st else None


def build_certificate(model_path: str | Path, name: str, *, not_tried: str = "") -> str | None:
    """None when engine ``name`` passed its gate in this model's last build under the current
    fingerprint (model, calibration set, runtimes, machine, recipe); else why not. For engines
    whose only certificate is the build record (no file of their own carries a gate)."""
    st = read_status(model_path)
    if st is None:
        # no "gate" in these words: selection warns about gate failures, and this is routine
        return "not built on this machine yet (build on arrival builds and checks it; 'nscmonitor engine autobuild MODEL')"
    attempt = build_attempt(model_path, name)
    if attempt is None:
        return "its last engine build did not try it" + (f" ({not_tried})" if not_tried else "")
    if not attempt.get("passed"):
        why = attempt.get("reason") or "see engine-status.json"
        return f"failed its gate: {why}" if attempt.get("gate") else f"could not be gated: {why}"
    if fingerprint(model_path, calibration_dir=st.calibration_dir).changes(st.fingerprint):
        return "gated under another model, runtime or machine; it is gated again by the next build"
    return None


def engine_tiles_per_s(speed: dict[str, Any]) -> float:
    """The timed engine's tiles/s in a speed record (int8 or bf16), beside its fp32 figure."""
    return float(speed["int8_tiles_per_s"] if "int8_tiles_per_s" in speed else speed["bf16_tiles_per_s"])


def slower_than_fp32(speed: dict[str, Any]) -> bool:
    """A reduced-precision engine only serves on its own if the build timed it at least as fast
    as fp32. It is an approximation of the model, certified to within the gate's tolerance;
    where it buys no speed the exact model should serve. A tie within the timing noise may go
    either way, and either is then fine: the figures are the build's, kept in its status."""
    return engine_tiles_per_s(speed) < speed["fp32_tiles_per_s"]


def speedup(speed: dict[str, Any]) -> float:
    """The engine's tiles/s over fp32's, both timed in the same alternating rounds: the figure
    that ranks CPU engines timed at different moments (each against its own fp32 rounds)."""
    return engine_tiles_per_s(speed) / speed["fp32_tiles_per_s"]


#: the status field holding each CPU engine's speed against fp32 on this machine
SPEED_FIELDS = {"openvino-int8": "openvino_speed", "ort-int8": "ort_speed", "openvino-bf16": "openvino_bf16_speed"}
#: the key of the engine's own tiles/s in each of those records
SPEED_KEYS = {"openvino_speed": "int8_tiles_per_s", "ort_speed": "int8_tiles_per_s",
              "openvino_bf16_speed": "bf16_tiles_per_s"}


#: the key suffix of the large request's timing as two parallel requests (``autobuild_run._two_stream_twin``)
TWO_STREAMS = "_large_two_streams_tiles_per_s"


def large_streams(speed: dict[str, Any]) -> int:
    """How many parallel large requests a speed record names for the engine that serves (1 or 2)."""
    return int(speed.get(large_key(speed).replace("_tiles_per_s", "_streams"), 1))


def large_key(speed: dict[str, Any]) -> str:
    """The key of the large request's tiles/s in a speed record: of the OpenVINO precision that
    serves in an int8 record, of the one engine in a bf16 record."""
    if "int8_tiles_per_s" in speed:
        return f"int8_{speed.get('precision', 'f32')}_large_tiles_per_s"
    return "bf16_large_tiles_per_s"


def large_speedup(speed: dict[str, Any]) -> float:
    """The engine's speed-up in the requests frames of many tiles get (OpenVINO's large request,
    as two parallel ones where the build timed those faster); the small request's figure where
    the engine has no large one or the large one is not faster."""
    small = engine_tiles_per_s(speed)
    key = large_key(speed)
    big = speed.get(key.replace("_large_tiles_per_s", TWO_STREAMS) if large_streams(speed) == 2 else key)
    return max(small, float(big) if isinstance(big, (int, float)) else 0.0) / speed["fp32_tiles_per_s"]


#: two timings of one engine in one build differ by a few per cent; closer than this, two
#: engines are tied in the daemon's small request
TIMING_NOISE = 0.05


def choose_cpu_engine(speeds: dict[str, dict[str, Any]]) -> str | None:
    """Of the certified CPU engines the build timed (engine name -> speed record), the one to
    serve: the fastest against fp32 at the daemon's small batch (what a frame of few tiles gets,
    so an engine faster only in large requests never serves where it is slower); among those
    tied with it within the timing noise, the one fastest in large requests (frames of many
    tiles, a backlog). Measured on a 2-core AVX2-only CPU, the demo model: ONNX Runtime int8
    966 and OpenVINO 956 tiles/s at the small batch (a tie), OpenVINO 1,304 in its large
    requests. None when every engine ran slower than fp32."""
    fast = {name: s for name, s in speeds.items() if not slower_than_fp32(s)}
    if not fast:
        return None
    top = max(speedup(s) for s in fast.values())
    tied = [name for name, s in fast.items() if speedup(s) >= top * (1 - TIMING_NOISE)]
    return max(tied, key=lambda name: (large_speedup(fast[name]), speedup(fast[name])))


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
        line = f"{status.engine}{of} ready ({gate}{secs})" if gate else f"{status.engine}{of} ready{secs}"
        s = getattr(status, SPEED_FIELDS.get(status.engine or "", ""), None)
        if s and slower_than_fp32(s):
            line += (f"; slower than fp32 here ({engine_tiles_per_s(s):.0f} vs {s['fp32_tiles_per_s']:.0f} tiles/s), "
                     f"so fp32 serves unless engine: {status.engine} is set")
        elif s:
            line += f"; {engine_tiles_per_s(s):.0f} against {s['fp32_tiles_per_s']:.0f} tiles/s in fp32 here"
        large = s.get(large_key(s)) if s else None
        if isinstance(large, (int, float)) and s.get("large_batch"):
            two = s.get(large_key(s).replace("_large_tiles_per_s", TWO_STREAMS))
            if large_streams(s) == 2 and isinstance(two, (int, float)):
                line += (f" ({two:.0f} tiles/s in chunks of {s['large_batch']}, frames of many tiles; "
                         f"two parallel requests of {s['large_batch'] // 2})")
            else:
                line += f" ({large:.0f} tiles/s in chunks of {s['large_batch']}, frames of many tiles)"
        if s and PRECISION_TEXT.get(s.get("precision", "f32")):
            line += "; " + PRECISION_TEXT[s["precision"]]
        if status.engine == "openvino-bf16":
            line += "; the fp32 model, all of it in bf16 (no int8 file)"
        if status.pending:
            line += (f"; it serves while the build goes on with {', '.join(status.pending)}, and the faster "
                     "certified engine serves after")
        return line
    line = f"no built engine{of}: {status.reason}"
    if status.transient:
        line += ("; a failure of this machine (disk space, permissions, memory), not of the model: a running "
                 "daemon tries the build again after an hour, then at doubling intervals up to a day, and so does "
                 "the next daemon start, registration or activation")
    return line


def summary(model_path: str | Path, version: str | None = None) -> dict[str, Any]:
    """The engine build record as plain data for ``status --json`` and ``models show``."""
    st = read_status(model_path)
    running = build_running(model_path)
    out: dict[str, Any] = {"state": "building" if running else (st.state if st else "none"),
                           "message": describe(st, version)}
    if running and (st is None or (st.state != "building" and not st.pending)):  # its record not written yet
        out["message"] = f"building an engine{' for ' + version if version else ''} on this machine; scoring " \
                         "goes on with the engine in use"
    if st is not None:
        out.update({k: v for k, v in st.to_dict().items() if k in (
            "engine", "precision", "gate", "reason", "build_seconds", "started_at", "finished_at", "target")})
        out.update({k: v for k, v in st.to_dict().items() if k in SPEED_FIELDS.values() and v})
        if st.state == "building" and not running:
            out["state"] = "interrupted"
            out["message"] = f"the build{' for ' + version if version else ''} started {st.started_at} was interrupted; " \
                             "it is retried at the next trigger"
        elif st.pending and not running:  # its engine still serves; what it had yet to try is tried again
            out["state"] = "interrupted"
            out["message"] = (f"{st.engine}{' for ' + version if version else ''} serves; the build started "
                              f"{st.started_at} was interrupted before it had tried {', '.join(st.pending)}, "
                              "which is retried at the next trigger")
        if st.pending:
            out["pending"] = list(st.pending)
        if st.transient:
            out["transient"] = True
    return out


def token(model_path: str | Path) -> str | None:
    """Identity of the engine built here for this model: changes exactly when a new build
    has passed its gate, which is when the daemon should reselect its engine. It begins with
    the engine's name (``token_engine``)."""
    st = read_status(model_path)
    if st is None or st.state != "ready":
        return None
    return f"{st.engine}@{st.finished_at}:{hashlib.sha1(json.dumps(st.fingerprint, sort_keys=True).encode()).hexdigest()[:8]}"


def token_engine(tok: str | None) -> str | None:
    """The name of the engine a ``token`` stands for (None for no token)."""
    return tok.split("@", 1)[0] if tok else None
