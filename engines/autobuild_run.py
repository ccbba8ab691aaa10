"""The engine build itself, run in the child process ``nscmonitor engine autobuild MODEL``:
quantise to int8, build TensorRT engines where a GPU has them, gate each against fp32 on the
model's held-out tiles and record the best that passes (``autobuild_status``)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from nscmonitor.engines.autobuild_status import (NO_CALIBRATION, SPEED_FIELDS, TWO_STREAMS, EngineStatus,
                                                 _model_tiles_path, build_running, calibration_sha256, cached_sha256,
                                                 choose_cpu_engine, describe, engine_tiles_per_s, fingerprint,
                                                 gpu_names, large_key, large_speedup, large_streams, read_status,
                                                 slower_than_fp32, speedup, write_status)
from nscmonitor.engines.base import EngineError
from nscmonitor.engines.openvino import GATE_KEYS

# the logger of build-on-arrival as a whole, as before the build had a module of its own
log = logging.getLogger("nscmonitor.engines.autobuild")


# --- what to build ------------------------------------------------------------------------
def has_tensorrt_gpu() -> bool:
    import importlib.util

    from nscmonitor.engines.tensorrt import trt_disabled

    return bool(gpu_names()) and importlib.util.find_spec("tensorrt") is not None and not trt_disabled()


def has_openvino() -> bool:
    import importlib.util

    from nscmonitor.engines.openvino import openvino_disabled

    return importlib.util.find_spec("openvino") is not None and not openvino_disabled()


def has_torch_cuda() -> bool:
    """An NVIDIA GPU and torch are here (whether torch is a CUDA build is found out by the
    attempt itself: importing torch here would cost the daemon seconds)."""
    import importlib.util

    from nscmonitor.engines.torch import torch_disabled

    return bool(gpu_names()) and importlib.util.find_spec("torch") is not None and not torch_disabled()


def plan(*, tensorrt_gpu: bool, openvino: bool, torch_cuda: bool = False, bf16: bool = False) -> tuple[str, ...]:
    """Engines to try, best first (the selection order of ``engines.select``). The CPU int8
    model is always built first because TensorRT's int8 engine is parsed from its Q/DQ graph
    (and it is the fallback should the GPU go); the best engine that passes its gate is the
    one served, among the CPU engines the fastest. ``bf16``: OpenVINO can run bf16 on this
    CPU, so the fp32 model in bf16 (``openvino-bf16``) is gated after the int8 file."""
    cpu = ("openvino-int8", *(("openvino-bf16",) if bf16 else ())) if openvino else ("ort-int8",)
    gpu = (("tensorrt-int8", "tensorrt-fp16") if tensorrt_gpu else ()) + (("torch-cuda-fp16",) if torch_cuda else ())
    return (*gpu, *cpu)


def targets_here() -> tuple[str, ...]:
    """The plan for this machine, as every caller (the build, the command line, a model
    without a calibration set) must see it."""
    from nscmonitor.engines.openvino import has_bf16

    openvino = has_openvino()
    return plan(tensorrt_gpu=has_tensorrt_gpu(), openvino=openvino, torch_cuda=has_torch_cuda(),
                bf16=openvino and has_bf16())


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
    #: it failed for a reason of this machine, not of the model (``environmental``)
    environment: bool = False


def environmental(exc: BaseException) -> bool:
    """A failure of the machine rather than of the model: a full disk, a folder without write
    permission, a network share gone, too little memory. Unlike a refused gate or a graph a
    runtime cannot take, it may be gone at the next try, so such a build is retried at the next
    trigger instead of being kept until the model or the runtimes change (a disk filled by a
    weekend's images would otherwise leave the lab on fp32 for good)."""
    return isinstance(exc, (OSError, MemoryError))


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
    record = read_onnx_metadata(path).extra.get("int8") or {}
    gates = [record.get(key) for key in GATE_KEYS.values() if record.get(key)]
    # the record shown is a passed one (f32 first), else f32's refusal
    ov_gate = next((g for g in gates if g.get("passed")), gates[0] if gates else None)
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


def _torch_cuda(model_path: Path, tiles: _Tiles, threads: int) -> Attempt:
    from nscmonitor.engines.torch import checkpoint_for
    from nscmonitor.engines.torch_cuda import NAME, gate

    t0 = time.monotonic()
    ckpt = checkpoint_for(model_path)
    if not ckpt.is_file():
        return Attempt(NAME, False, reason=f"no {ckpt.name} beside the model (it serves the training checkpoint)")
    record = gate(model_path, tiles.heldout, threads=threads)
    return Attempt(NAME, bool(record["passed"]), ckpt.name, record,
                   None if record["passed"] else "; ".join(record.get("reasons") or ()), time.monotonic() - t0)


def _openvino_bf16(model_path: Path, tiles: _Tiles, threads: int) -> Attempt:
    """The fp32 model in bf16 on OpenVINO, gated against ONNX Runtime fp32 on the held-out tiles."""
    from nscmonitor.engines import openvino_bf16
    from nscmonitor.engines.metadata import read_onnx_metadata
    from nscmonitor.engines.ort import OrtCpuEngine
    from nscmonitor.engines.validate import predict_with_ood

    t0 = time.monotonic()
    meta = read_onnx_metadata(model_path)
    reference = OrtCpuEngine(model_path, meta, threads=threads)
    reference.load()
    try:
        ref = predict_with_ood(reference, tiles.heldout.x)
    finally:
        reference.close()
    report = openvino_bf16.gate(model_path, meta, tiles.heldout, ref, threads=threads)
    (log.info if report.passed else log.warning)("validation gate: %s", report.summary())
    return Attempt(openvino_bf16.NAME, report.passed, model_path.name, report.to_dict(),
                   None if report.passed else "; ".join(report.reasons), time.monotonic() - t0)


def _attempts(model_path: Path, tiles: _Tiles, targets: tuple[str, ...], threads: int, say: Progress,
              detail: Callable[[int, int, str], None] | None,
              certified: Callable[[Attempt, tuple[str, ...]], None] | None = None) -> list[Attempt]:
    """The CPU int8 model, then the GPU engines of ``targets`` until one passes; a backend's
    failure is recorded as its attempt's reason and the next one is tried. Without TensorRT
    (whose int8 engine is parsed from the CPU int8 model) the torch GPU engine is gated first
    and, when it passes, the CPU build is skipped: it would cost minutes of a GPU box's CPU for
    a fallback that is only wanted if the GPU goes, and then the machine's fingerprint changes
    and the next build makes it. The fp32 model in bf16 is gated before the int8 file: it takes
    seconds where an int8 file that needs layers kept fp32 takes minutes, and once it has
    passed, ``certified`` gets it and the engines still to try, so it can serve meanwhile."""
    attempts: list[Attempt] = []
    if "torch-cuda-fp16" in targets and not any(t.startswith("tensorrt") for t in targets):
        attempts.append(_try_torch_cuda(model_path, tiles, threads, say))
        if attempts[-1].passed:
            return attempts
    from nscmonitor.engines.openvino import has_bf16

    bf16: list[Attempt] = []
    if "openvino-bf16" in targets and has_bf16():
        say(f"gating the fp32 model in bf16 on OpenVINO against fp32 on {len(tiles.heldout)} held-out tiles")
        try:
            bf16.append(_openvino_bf16(model_path, tiles, threads))
        except Exception as exc:  # this attempt's outcome, not the build's end
            log.exception("OpenVINO bf16 gate of %s failed", model_path)
            bf16.append(Attempt("openvino-bf16", False, reason=f"OpenVINO bf16 engine failed: {exc}",
                                environment=environmental(exc)))
        if bf16[0].passed and certified is not None:
            certified(bf16[0], tuple(t for t in targets if t != "openvino-bf16"))
    cpu_target = next((t for t in targets if t in ("openvino-int8", "ort-int8")), "ort-int8")
    say(f"quantising to int8 and gating against fp32 on {len(tiles.heldout)} held-out tiles")
    try:
        attempts += _cpu_int8(model_path, tiles, cpu_target == "openvino-int8", threads, detail)
    except Exception as exc:  # a backend's failure is this attempt's outcome, not the build's end
        log.exception("int8 build of %s failed", model_path)
        attempts.append(Attempt(cpu_target, False, reason=f"int8 build failed: {exc}", environment=environmental(exc)))
    attempts += bf16
    for precision in ("int8", "fp16"):
        if f"tensorrt-{precision}" not in targets:
            continue
        say(f"building the TensorRT {precision} engine and gating it")
        try:
            attempts.append(_tensorrt(model_path, tiles, precision))
        except Exception as exc:  # TensorRT errors come in many types; record and go on
            log.exception("TensorRT %s build of %s failed", precision, model_path)
            attempts.append(Attempt(f"tensorrt-{precision}", False, reason=f"TensorRT build failed: {exc}",
                                    environment=environmental(exc)))
        if attempts[-1].passed:
            break
    if ("torch-cuda-fp16" in targets and not any(a.engine == "torch-cuda-fp16" for a in attempts)
            and not any(a.passed and a.engine.startswith("tensorrt") for a in attempts)):
        attempts.append(_try_torch_cuda(model_path, tiles, threads, say))
    return attempts


def _try_torch_cuda(model_path: Path, tiles: _Tiles, threads: int, say: Progress) -> Attempt:
    say("gating the torch CUDA fp16 engine against fp32")
    try:
        return _torch_cuda(model_path, tiles, threads)
    except Exception as exc:  # a CPU-only torch, a CUDA error: this attempt's outcome, not the build's end
        log.exception("torch CUDA gate of %s failed", model_path)
        return Attempt("torch-cuda-fp16", False, reason=f"torch CUDA engine failed: {exc}",
                       environment=environmental(exc))


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
    targets = targets or targets_here()
    started = _now()
    base = EngineStatus("building", asdict(fp), target=targets[0], started_at=started, pid=os.getpid())
    carried = _carried(model_path, fp, started)
    write_status(model_path, carried or base)
    t0 = time.monotonic()
    try:
        meta = read_onnx_metadata(model_path)
        say("loading the calibration and held-out tiles")
        tiles = load_tiles_for(model_path, meta, calibration_dir)
    except (EngineError, MetadataError, OSError, ValueError) as exc:
        return _finish(model_path, replace(base, state="failed", reason=f"cannot read the calibration set: {exc}",
                                           transient=environmental(exc)), t0)
    if tiles is None:
        return _finish(model_path, replace(base, state="no-calibration", reason=NO_CALIBRATION), t0)
    base = replace(base, calibration_source=tiles.source, calibration_dir=tiles.calibration_dir)

    def serve_meanwhile(attempt: Attempt, pending: tuple[str, ...]) -> None:
        """A CPU engine certified before the build's end serves until the build has tried the
        rest: its own record, "ready" with the engines still ``pending``, makes the daemon
        reselect (``token``) as a final record does. Only where it is not slower than fp32."""
        field = SPEED_FIELDS[attempt.engine]
        say(f"timing {attempt.engine} against fp32 on this machine")
        try:
            speed = _cpu_speeds(model_path, attempt.engine, model_path.parent / str(attempt.artefact),
                                tiles.heldout.x, threads)
        except EngineError as exc:  # timed again at the build's end, where a failure counts
            log.warning("could not time %s against fp32 for %s: %s", attempt.engine, model_path, exc)
            return
        if slower_than_fp32(speed) or not pending:
            return
        record = {"engine": attempt.engine, "passed": True, "gate": attempt.gate, "reason": None,
                  "seconds": round(attempt.seconds, 2)}
        interim = replace(base, **{field: speed}, state="ready", engine=attempt.engine,
                          precision=attempt.engine.rsplit("-", 1)[1], artefact=attempt.artefact, gate=attempt.gate,
                          attempts=(record,), pending=pending, build_seconds=round(time.monotonic() - t0, 2),
                          finished_at=_now())
        if carried is not None and (carried.engine, carried.artefact) == (attempt.engine, attempt.artefact):
            interim = replace(interim, finished_at=carried.finished_at)  # the same engine: the token stays, no reload
        write_status(model_path, interim)
        log.info("%s: %s serves meanwhile (%.2fx fp32 here); trying %s", model_path, attempt.engine, speedup(speed),
                 ", ".join(pending))

    attempts = _attempts(model_path, tiles, targets, threads, say, detail, serve_meanwhile)
    order = {name: i for i, name in enumerate(("tensorrt-int8", "tensorrt-fp16", "torch-cuda-fp16", "openvino-int8",
                                                "ort-int8", "openvino-bf16"))}
    passed = sorted((a for a in attempts if a.passed), key=lambda a: order.get(a.engine, 99))
    records = tuple({"engine": a.engine, "passed": a.passed, "gate": a.gate, "reason": a.reason,
                     "seconds": round(a.seconds, 2), **({"environment": True} if a.environment else {})}
                    for a in attempts)
    if not passed:
        why = "; ".join(f"{a.engine}: {a.reason}" for a in attempts) or "nothing could be built"
        transient = any(a.environment for a in attempts)
        what = "no engine could be built here" if all(a.environment for a in attempts) else "no engine passed its gate"
        return _finish(model_path, replace(base, state="failed", attempts=records, transient=transient,
                                           reason=f"{what}, fp32 serves ({why})"), t0)
    # A GPU engine that passed serves (sorted first; the CPU's fp32 is no yardstick for it).
    # Otherwise every certified CPU engine is timed against fp32 and the fastest that is not
    # slower serves (``choose_cpu_engine``): an int8 file that kept many blocks fp32 can lose to
    # the whole model in bf16.
    timed: dict[str, dict[str, Any]] = {}
    for i, candidate in enumerate(passed):
        field = SPEED_FIELDS.get(candidate.engine)
        if field is None:
            break
        # timed here even when it was timed early to serve meanwhile: the choice compares timings
        # of one moment (a 2-core VM's speed moved by a third within minutes; the demo's int8 and
        # bf16 engines, timed 30 s apart, swapped ranks)
        say(f"timing {candidate.engine} against fp32 on this machine")
        try:
            speed = _cpu_speeds(model_path, candidate.engine, model_path.parent / candidate.artefact,
                                tiles.heldout.x, threads)
        except EngineError as exc:  # it passed its gate moments ago; selection will say why it cannot load
            log.warning("could not time %s against fp32 for %s: %s", candidate.engine, model_path, exc)
            continue
        base = replace(base, **{field: speed})
        # the variant the timing chose serves whenever this engine does (named in the settings too)
        passed[i] = _with_serving_gate(candidate, speed, model_path)
        timed[candidate.engine] = speed
    chosen = choose_cpu_engine(timed)
    best = next((c for c in passed if c.engine == chosen), passed[0])
    return _finish(model_path, replace(base, state="ready", engine=best.engine, precision=best.engine.rsplit("-", 1)[1],
                                       artefact=best.artefact, gate=best.gate, attempts=records), t0)


def _carried(model_path: Path, fp: Any, started: str) -> EngineStatus | None:
    """The record of an earlier build of this very model that died after an engine it had
    certified started serving (``pending`` engines), restamped as this build's: that engine
    stays certified under the same fingerprint, so it keeps serving while this build goes on
    (a plain "building" record dropped the daemon to fp32 until the engine had passed its gate
    again). Its token is unchanged, so the daemon does not even reload it."""
    prev = read_status(model_path)
    if (prev is None or prev.state != "ready" or not prev.pending or prev.fingerprint != asdict(fp)
            or not prev.artefact or not (model_path.parent / prev.artefact).is_file()):
        return None
    log.info("%s: %s serves on while the interrupted build is retried", model_path, prev.engine)
    return replace(prev, started_at=started, pid=os.getpid())


def _with_serving_gate(candidate: Attempt, speed: dict[str, Any], model_path: Path) -> Attempt:
    """The attempt with the gate of the variant that will serve: on OpenVINO the timing may
    choose bf16 for the non-int8 layers, whose gate is its own (status and doctor quote it)."""
    from nscmonitor.engines.metadata import read_onnx_metadata

    precision = speed.get("precision", "f32")
    if candidate.engine != "openvino-int8" or precision == "f32" or not candidate.artefact:
        return candidate
    gate = (read_onnx_metadata(model_path.parent / candidate.artefact).extra.get("int8") or {}).get(GATE_KEYS[precision])
    if not gate:
        return candidate
    kept = {"kept_fp32": candidate.gate["kept_fp32"]} if candidate.gate and candidate.gate.get("kept_fp32") else {}
    return replace(candidate, gate={**gate, **kept})


def _cpu_speeds(model_path: Path, engine_name: str, int8_path: Path, x: Any, threads: int,
                rounds: int = 5, seconds: float = 0.4) -> dict[str, Any]:
    """Tiles/s of the int8 model on ``engine_name`` and of the fp32 model on ONNX Runtime
    (what serves without an int8 engine), timed as ``nscmonitor engine bench`` times them:
    all loaded and warmed up first (loading is not what the daemon pays per batch), then in
    alternating rounds, and each the median of its rounds. One timing of each decided the
    demo model either way on a 2-core VM (int8 0.67-1.06x fp32 in six timings); alternating
    exposes all to the same load, and the median drops a round another job disturbed.

    On OpenVINO each precision of the non-int8 layers whose gate passed is timed (compiled for
    the gate's batch, as the daemon compiles for its own), and the faster one is the engine's:
    ``precision`` in the result, ``int8_tiles_per_s`` its speed, ``int8_<precision>_tiles_per_s``
    each one's. The decision is taken at the gate's batch, the daemon's default and what a frame
    of few tiles gets; where the engine also has a large request (``OpenVinoEngine``, small
    tiles), that is timed too, in chunks of its size, and recorded beside it
    (``int8_<precision>_large_tiles_per_s``, ``large_batch``) as what frames of many tiles get."""
    import statistics

    from nscmonitor.engines.bench import time_engine
    from nscmonitor.engines.metadata import read_onnx_metadata
    from nscmonitor.engines.ort import OrtCpuEngine
    from nscmonitor.engines.validate import GATE_BATCH

    meta = read_onnx_metadata(int8_path)
    engines: dict[str, Any] = {"fp32_tiles_per_s": OrtCpuEngine(model_path, read_onnx_metadata(model_path),
                                                                threads=threads)}
    if engine_name == "openvino-bf16":
        from nscmonitor.engines import openvino_bf16

        engines["bf16_tiles_per_s"] = openvino_bf16.engine(model_path, meta, threads=threads)
    elif engine_name == "openvino-int8":
        from nscmonitor.engines.openvino import OpenVinoEngine, has_bf16, large_batch_for

        record = meta.extra.get("int8") or {}
        large_request = large_batch_for(GATE_BATCH, meta.input_size ** 2)
        for precision, key in GATE_KEYS.items():
            if (record.get(key) or {}).get("passed") and (precision == "f32" or has_bf16()):
                engines[f"int8_{precision}_tiles_per_s"] = OpenVinoEngine(int8_path, meta, threads=threads,
                                                                          batch_size=GATE_BATCH, precision=precision,
                                                                          large_batch=large_request)
    else:
        engines["int8_tiles_per_s"] = OrtCpuEngine(int8_path, meta, threads=threads)
    runs: dict[str, list[float]] = {k: [] for k in engines}
    large: dict[str, int] = {}
    twins: dict[str, Any] = {}
    try:
        for key, engine in engines.items():
            engine.load()
            if engine.preferred_batch and engine.preferred_batch > GATE_BATCH:
                large[key] = engine.preferred_batch
                runs[key.replace("_tiles_per_s", "_large_tiles_per_s")] = []
                twin = _two_stream_twin(engine, x, threads)
                if twin is not None:
                    twins[key] = twin
                    runs[key.replace("_tiles_per_s", TWO_STREAMS)] = []
        for _ in range(rounds):
            for key, engine in engines.items():
                runs[key].append(time_engine(engine, x, GATE_BATCH, min_seconds=seconds).images_per_s)
                if key in large:
                    runs[key.replace("_tiles_per_s", "_large_tiles_per_s")].append(
                        time_engine(engine, x, large[key], min_seconds=seconds).images_per_s)
                if key in twins:
                    runs[key.replace("_tiles_per_s", TWO_STREAMS)].append(
                        time_engine(twins[key], x, large[key], min_seconds=seconds).images_per_s)
    finally:
        for engine in [*engines.values(), *twins.values()]:
            engine.close()
    out: dict[str, Any] = {key: round(statistics.median(v), 1) for key, v in runs.items()}
    if large:
        out["large_batch"] = max(large.values())
    for key in twins:
        one, two = key.replace("_tiles_per_s", "_large_tiles_per_s"), key.replace("_tiles_per_s", TWO_STREAMS)
        if out[two] > out[one] * (1 + STREAMS_GAIN):
            out[key.replace("_tiles_per_s", "_large_streams")] = 2
    if engine_name == "openvino-int8":
        variants = {p: out[f"int8_{p}_tiles_per_s"] for p in GATE_KEYS if f"int8_{p}_tiles_per_s" in out}
        if not variants:
            raise EngineError(f"{int8_path}: no OpenVINO gate passed that this CPU can run")
        out["precision"] = max(variants, key=lambda p: variants[p])
        out["int8_tiles_per_s"] = variants[out["precision"]]
    return out


#: how much faster two parallel large requests must time than one to serve instead of it (the
#: two give the same outputs, so this only keeps a tie from flipping the layout): 5 % until
#: 2026-12-06, when the ResNet50's bf16 engine timed two requests 2.5-10 % faster in five builds
#: on the AMX Xeon and three of them stayed with one (docs/performance.md, runs 24-28)
STREAMS_GAIN = 0.02


def _two_stream_twin(engine: Any, x: Any, threads: int) -> Any | None:
    """The same OpenVINO engine with its large request split into two parallel ones of half the
    tiles, one thread each, loaded; None where there are not two threads, the request does not
    halve, or it does not give the engine's own outputs to the bit on these tiles (the gate
    certified those). Measured on the 2-core Xeon with AMX: the same bits, 1.09-1.16x; on a
    2-core AMD EPYC two streams had timed slower, so the build times both."""
    from nscmonitor.engines.openvino import OpenVinoEngine
    from nscmonitor.engines.validate import GATE_BATCH, predict_with_ood

    chunk = engine.preferred_batch
    if (threads or os.cpu_count() or 1) < 2 or engine.large_streams != 1 or chunk % 2 or chunk // 2 <= GATE_BATCH:
        return None
    twin = OpenVinoEngine(engine.model_path, engine.metadata, threads=threads, batch_size=GATE_BATCH,
                          precision=engine.precision, large_batch=chunk // 2, large_streams=2)
    try:
        twin.load()
        sample = np.concatenate([x] * -(-2 * chunk // len(x)))[:2 * chunk]  # whole large requests, however few tiles
        mine, theirs = predict_with_ood(engine, sample, chunk), predict_with_ood(twin, sample, chunk)
    except EngineError as exc:
        log.info("%s: two parallel large requests not timed: %s", engine.model_path, exc)
        twin.close()
        return None
    if not all(a is None and b is None or a is not None and b is not None and np.array_equal(a, b)
               for a, b in zip(mine, theirs)):
        log.info("%s: two parallel large requests scored otherwise than one; not used", engine.model_path)
        twin.close()
        return None
    return twin


def openvino_large_streams(model_path: str | Path, engine: str = "openvino-int8") -> int:
    """How many parallel large requests the build timed faster for ``engine`` (1 or 2)."""
    s = _speed_record(model_path, engine)
    return large_streams(s) if s else 1


def openvino_precision(model_path: str | Path) -> str:
    """The precision OpenVINO runs the int8 file's non-int8 layers in here: the one the build
    timed faster among those whose gate passed (``_cpu_speeds``), f32 without such a record."""
    from nscmonitor.engines.openvino import has_bf16

    precision = str((_speed_record(model_path, "openvino-int8") or {}).get("precision", "f32"))
    return precision if precision == "f32" or has_bf16() else "f32"


#: how much slower than the small request the build must time the large one to leave it unused
LARGE_SLOWER = 0.05


def openvino_large_batch(model_path: str | Path, batch_size: int, input_size: int,
                         engine: str = "openvino-int8") -> int:
    """The large request's batch for ``engine`` on OpenVINO (the int8 file, or the fp32 model in
    bf16; ``openvino.large_batch_for``), or 0 where the build timed that request clearly slower
    (by more than ``LARGE_SLOWER``, beyond the few per cent two timings of one engine differ by)
    than the small one in the precision that serves: for a file whose int8 layers are few,
    larger batches buy nothing (a ResNet50 with 9 of 16 blocks kept fp32: 401 against 410
    tiles/s), and frames need not wait for a batch that is slower."""
    from nscmonitor.engines.openvino import large_batch_for

    large = large_batch_for(batch_size, input_size ** 2)
    s = _speed_record(model_path, engine) if large else None
    if s:
        key = large_key(s)
        small, big = s.get(key.replace("_large_tiles_per_s", "_tiles_per_s")), s.get(key)
        if isinstance(small, (int, float)) and isinstance(big, (int, float)) and big < small * (1 - LARGE_SLOWER):
            return 0
    return large


def _speed_record(model_path: str | Path, engine_name: str,
                  status: EngineStatus | None = None) -> dict[str, Any] | None:
    """The build's timing of ``engine_name`` against fp32 for this very model (None when the
    engine is not a CPU engine, or no build of this model timed it); ``status``: the record
    already read, else it is read here."""
    field = SPEED_FIELDS.get(engine_name)
    st = status if status is not None else (read_status(model_path) if field else None)
    if field is None or st is None or st.fingerprint.get("model_sha256") != cached_sha256(model_path):
        return None
    return getattr(st, field, None)


def speed_refusal(model_path: str | Path, engine_name: str) -> str | None:
    """Why ``engine_name`` (a CPU engine that passed its gate) should not serve this model here
    when the engine is chosen automatically, from the build's own timing: it ran slower than
    fp32, or the build timed another certified CPU engine faster and chose that one. None when
    neither, or no build recorded it."""
    st = read_status(model_path) if engine_name in SPEED_FIELDS else None
    s = _speed_record(model_path, engine_name, st)
    if not s:
        if st is not None and st.pending and st.engine != engine_name and build_running(model_path) \
                and st.fingerprint.get("model_sha256") == cached_sha256(model_path):
            # an int8 file the ladder has just published is not timed yet; what the build timed serves meanwhile
            return (f"its build is still running and has not timed it; {st.engine} serves meanwhile "
                    "(the build's end chooses between them)")
        return None
    if slower_than_fp32(s):
        return (f"{engine_name} runs slower than fp32 on this machine ({engine_tiles_per_s(s):.1f} vs "
                f"{s['fp32_tiles_per_s']:.1f} tiles/s, measured by its build); set engine: {engine_name} to serve "
                "it anyway")
    chosen = st.engine if st.state == "ready" else None
    best = _speed_record(model_path, chosen, st) if chosen and chosen != engine_name else None
    if best and choose_cpu_engine({chosen: best, engine_name: s}) == chosen:
        if speedup(best) >= speedup(s):
            return (f"the build timed {chosen} faster here ({speedup(best):.2f}x fp32 against {speedup(s):.2f}x) "
                    f"and serves it; set engine: {engine_name} to serve this one")
        return (f"the build timed {chosen} as fast in small requests ({speedup(best):.2f}x fp32 against "
                f"{speedup(s):.2f}x, within the timing noise) and faster in large ones ({large_speedup(best):.2f}x "
                f"against {large_speedup(s):.2f}x) and serves it; set engine: {engine_name} to serve this one")
    return None


def _finish(model_path: Path, status: EngineStatus, t0: float) -> EngineStatus:
    status = replace(status, build_seconds=round(time.monotonic() - t0, 2), finished_at=_now(), pid=None)
    write_status(model_path, status)
    (log.info if status.state == "ready" else log.warning)("engine build for %s: %s", model_path, describe(status))
    return status
