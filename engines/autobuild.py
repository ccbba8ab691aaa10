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

import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from nscmonitor.engines.autobuild_run import (Attempt, Progress, _now, has_openvino, has_tensorrt_gpu, has_torch_cuda,
                                              load_tiles_for, speed_refusal, plan, run_build, slower_than_fp32,
                                              targets_here)
from nscmonitor.engines.autobuild_status import (LOCK_NAME, LOG_NAME, NO_CALIBRATION, SPEED_FIELDS, STATES, STATUS_NAME,
                                                 BuildLock, EngineStatus, Fingerprint, build_running, cached_sha256,
                                                 calibration_sha256, describe, fingerprint, gate_text, gpu_names,
                                                 lock_path, log_path, machine_id, read_status, runtime_versions,
                                                 status_path, summary, token, token_engine, write_status)

# The names above are imported for this module's own use and as its public face: callers
# import them from here, the one entry point of build-on-arrival.
__all__ = ["stop_build", "Attempt", "BuildLock", "EngineStatus", "Fingerprint", "LOCK_NAME", "LOG_NAME", "NO_BUILD_PREFERENCES",
           "NO_CALIBRATION", "Progress", "SPEED_FIELDS", "STATES", "STATUS_NAME", "artefact_present", "build_command",
           "build_running", "cached_sha256", "calibration_sha256", "copy_artefacts", "decide", "describe", "ensure",
           "fingerprint", "gate_text", "gpu_names", "has_openvino", "has_tensorrt_gpu", "has_torch_cuda",
           "load_tiles_for", "lock_path", "speed_refusal", "log_path", "machine_id", "needed", "plan", "read_status",
           "run_build",
           "runtime_versions", "slower_than_fp32", "spawn", "start", "status_path", "summary", "targets_here", "token",
           "token_engine", "wants_build", "write_status"]

log = logging.getLogger(__name__)

#: engine preferences under which building an int8/TensorRT engine would be wasted work
NO_BUILD_PREFERENCES = ("ort-cpu", "ort-fp32", "ort-cpu-fp32", "torch", "ort-cuda", "openvino-fp32")


def decide(status: EngineStatus | None, current: Fingerprint, *, artefact_present: bool, build_running: bool) -> str:
    """What to do about one model here: ``build``, ``wait`` (a build runs), ``ready`` or
    ``keep`` (an earlier attempt failed under this very fingerprint: retrying would fail the
    same way, so the current engine stays until something changes). A failure of the machine
    rather than the model (``transient``: a full disk) is built again; the daemon tries it after
    a growing wait (``scoring.engine_builds``), not at every heartbeat."""
    if build_running:
        return "wait"
    if status is None or current.changes(status.fingerprint):
        return "build"
    if status.state == "ready":  # a record still pending engines with no build running: the builder died
        return "ready" if artefact_present and not status.pending else "build"
    if status.state in ("failed", "no-calibration"):
        return "build" if status.transient else "keep"
    return "build"  # a "building" record with no build running: the builder died


def artefact_present(model_path: str | Path, status: EngineStatus | None) -> bool:
    return bool(status and status.artefact and (Path(model_path).parent / status.artefact).exists())


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
    write_status(model_path, EngineStatus("no-calibration", asdict(fp), target=targets_here()[0],
                                          reason=NO_CALIBRATION, started_at=_now(), finished_at=_now(),
                                          build_seconds=0.0))
    return True


def stop_build(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """Terminate a build process, and kill it if it has not ended after ``grace_s``."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
                stop_build(proc)
        else:
            spawn(model_path, wait=True, calibration_dir=cal, threads=threads)
    return read_status(model_path)


def copy_artefacts(src_model: str | Path, dest_dir: str | Path) -> bool:
    """Copy an engine built beside a training run's ``model.onnx`` (and its status) into the
    registry's version folder, so registering what ``nscmonitor train`` just built does not
    build it again; the copied status is checked against the copy's fingerprint as usual.
    Only for run folders (``model.onnx``): other names would not match the files' names."""
    from nscmonitor.engines.build import default_cache_dir
    from nscmonitor.engines.ort import int8_path_for
    from nscmonitor.engines.tensorrt import qdq_path_for

    src_model, dest_dir = Path(src_model), Path(dest_dir)
    if src_model.name != "model.onnx" or not status_path(src_model).is_file():
        return False
    int8, trt_int8 = int8_path_for(src_model), qdq_path_for(src_model)
    for p in (int8, int8.with_name(int8.name + ".gate.json"), trt_int8,
              trt_int8.with_name(trt_int8.name + ".gate.json"), status_path(src_model)):
        if p.is_file():
            shutil.copy2(p, dest_dir / p.name)
    if default_cache_dir(src_model).is_dir():
        shutil.copytree(default_cache_dir(src_model), dest_dir / default_cache_dir(src_model).name,
                        dirs_exist_ok=True)
    return True
