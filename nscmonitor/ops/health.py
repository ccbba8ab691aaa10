"""Is the instrument working: the daemon's health verdict, the served model's integrity and
engine build, and the doctor's checks of this machine.

One module for the command line (``status``, ``doctor``, ``service status``) and the
dashboard, so the window and the terminal never give two answers to the same question.
Everything here reads; nothing prints.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import shutil
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nscmonitor.config import Settings
from nscmonitor.core import ood_record

log = logging.getLogger(__name__)

STALE_S = 120.0
"""A heartbeat older than this is a stalled daemon (the daemon beats every 5 s)."""
#: the newest scored images judged for the out-of-distribution warning, at least this many of them,
#: and the flagged share that raises it: a model flags 4-5 % of its own kind of images (2-10 %
#: of plates it never saw, docs/training.md), so a quarter or more says the folder holds another
#: kind (a fluorescence channel, another objective or modality, another culture), not a bad plate
OOD_WINDOW, OOD_MIN_IMAGES, OOD_WARN_SHARE = 200, 20, 0.25
#: the newest scored (or skipped) images looked at for channels scored together and for
#: folders that give no readout at all
CHANNEL_WINDOW = 500
#: the share of an experiment's newest scored images failed as out of focus, and the fewest
#: such images, that say the instrument's focus needs a look: the simulated microscope's
#: autofocus fails on 2 % of frames, and a share five times that is no passing lapse (a
#: fogged lid, a plate not seated, a focus offset set for another plate type)
FOCUS_WARN_SHARE, FOCUS_MIN_IMAGES = 0.10, 5

Check = tuple[str, bool, str]  # name, ok, note


def health(repo: Any, *, now: datetime | None = None) -> dict:
    """The health verdict behind ``status``'s exit code: 0 healthy, 1 stalled (no heartbeat,
    or work waiting with nothing scored), 2 a watched folder is unreachable, 3 no daemon is
    running, 4 the database disk is almost full. ``repo`` is a ``store.reads.Repo``."""
    from nscmonitor.ops.checks import database_disk
    from nscmonitor.ops.disk_notice import last_warning

    now = now or datetime.now(timezone.utc)
    daemons = repo.daemons(1)
    d = daemons[0] if daemons else None
    verdict, code = _daemon_verdict(repo, d, now)
    disk = database_disk(repo.engine.url.render_as_string(hide_password=False))
    warnings = [disk.message] if disk and not disk.ok else []
    notice = last_warning(repo)  # the models folder's volume: only the daemon looks at it
    if notice and not warnings:
        warnings.append(notice)
    warnings += slow_rescan_warnings(d.watched if d is not None and d.state != "stopped" else [])
    flagged, judged = repo.recent_ood(OOD_WINDOW)
    warnings += scoring_warnings(repo, (flagged, judged))
    if disk and disk.level == "critical" and code == 0:
        verdict, code = f"database disk almost full: {disk.message}", 4
    return {
        "verdict": verdict, "exit_code": code, "warnings": warnings,
        "daemon": None if d is None else {
            "host": d.host, "pid": d.pid, "state": d.state, "heartbeat_at": d.heartbeat_at.isoformat(),
            "engine": d.engine, "model_version": d.model_version, "images_per_s": d.images_per_s, "watched": d.watched,
        },
        "queue": repo.queue_counts(),
        "scored_last_5_min": repo.scored_since(300),
        "unlike_training_data": {"flagged": flagged, "of_newest_scored": judged},
        "errors": [{"id": e.id, "path": e.path, "status": e.status, "reason": e.error, "at": e.updated_at.isoformat()}
                   for e in repo.errors(10)],
    }


#: a rescan whose work takes more than this share of its interval takes that share of the
#: daemon's loop from scoring
SLOW_RESCAN_SHARE = 0.25


def slow_rescan_warnings(watched: list[dict]) -> list[str]:
    """A warning per watched folder whose last full rescan took more than a quarter of its
    ``rescan_interval``: a folder that has gathered months of images, on a share where each
    look is a round trip. The daemon's loop scores between a rescan's slices, not during them."""
    out = []
    for w in watched:
        if not isinstance(w, dict):  # a row written before its daemon's first heartbeat
            continue
        took, every = w.get("rescan_s"), w.get("rescan_interval")
        if took is None or not every or took <= SLOW_RESCAN_SHARE * every:
            continue
        out.append(f"watch folder {w.get('path')}: its last full rescan took {took:.0f} s of every {every:g} s "
                   f"({w.get('files') or 0:,} files), time the daemon spends looking at files instead of scoring; "
                   "give each experiment its own watch folder and take finished ones out of the configuration, "
                   "or raise rescan_interval")
    return out


def scoring_warnings(repo: Any, ood: tuple[int, int] | None = None) -> list[str]:
    """What is being scored that makes readouts mean little or leaves them empty, for ``status``,
    the dashboard's status tab and the end of ``run`` alike: most of the newest images unlike
    the model's training data, several channels or planes averaged into the same readouts, a
    folder whose newest images were all skipped or all failed QC, or carry no time, two reads of
    a plate under one time point, many frames out of focus. ``ood``: the (flagged, judged) counts when
    the caller has them already."""
    ood_warning = ood_share_warning(*(ood if ood is not None else repo.recent_ood(OOD_WINDOW)))
    outcomes = repo.recent_outcomes(CHANNEL_WINDOW)  # one bounded read for both
    return (([ood_warning] if ood_warning else []) + mixed_channel_warnings(outcomes) + mixed_plane_warnings(outcomes)
            + all_skipped_warnings(outcomes) + focus_warnings(outcomes) + untimed_warnings(outcomes)
            + repeated_position_warnings(outcomes))


def focus_warnings(outcomes: dict[str, Any]) -> list[str]:  # dict[str, store.reads.Outcomes]
    """A warning per experiment where many of the newest scored images failed as out of focus:
    each such frame is left out of its well's readout, so the plate thins out while the
    daemon itself is healthy, and nobody sees it who does not open the image view."""
    out = []
    for name, o in sorted(outcomes.items()):
        judged = o.scored + o.qc_failed
        if o.out_of_focus < FOCUS_MIN_IMAGES or o.out_of_focus < FOCUS_WARN_SHARE * judged:
            continue
        out.append(f"experiment {name}: {o.out_of_focus} of its newest {judged} scored images "
                   f"({o.out_of_focus / judged:.0%}) failed QC as out of focus against their fields' nearest scans "
                   "and are left out of the readouts; check the instrument's focus (autofocus offset, plate "
                   "seating, condensation on the lid)")
    return out


def all_skipped_warnings(outcomes: dict[str, Any]) -> list[str]:  # dict[str, store.reads.Outcomes]
    """A warning per experiment none of whose newest images (at least ``OOD_MIN_IMAGES``) gave a
    readout: all skipped (a ``channel`` setting no file of the folder has: ImageXpress names give
    the wavelength's number, w1 = 1, not its name), or all failed QC (blank or saturated frames:
    an empty channel, a lamp off). The daemon is healthy and the plate stays empty."""
    out = []
    for name, o in sorted(outcomes.items()):
        if o.scored or o.skipped + o.qc_failed < OOD_MIN_IMAGES:
            continue
        if o.skipped >= o.qc_failed:
            out.append(f"experiment {name}: its newest {o.skipped} images were all skipped, none scored (e.g. "
                       f"{o.skip_reason}); check the folder's channel setting against what its file names carry "
                       "(a corrected setting scores these images from the daemon's next start)")
        else:
            out.append(f"experiment {name}: its newest {o.qc_failed} scored images all failed QC (e.g. "
                       f"{o.qc_reason}), so none gives a readout; check the instrument and the folder's channel")
    return out


def ood_share_warning(flagged: int, judged: int) -> str | None:
    """The warning when most of the newest scored images are flagged as unlike the model's
    training data: the daemon is healthy, but its readouts of that folder mean little, and the
    dashboard's banner only shows it to whoever opens the plate."""
    if judged < OOD_MIN_IMAGES or flagged < OOD_WARN_SHARE * judged:
        return None
    return (f"{flagged} of the newest {judged} scored images ({flagged / judged:.0%}) are unlike the model's "
            "training data (out-of-distribution flag): is a folder another channel, objective, modality or "
            "culture than the model was trained on? Their readouts are marked and left out of calls; "
            "'nscmonitor doctor' shows each folder's channel and pixel size")


def mixed_channel_warnings(outcomes: dict[str, Any]) -> list[str]:  # dict[str, store.reads.Outcomes]
    """A warning per experiment whose newest scored images are of several channels: a folder
    without a ``channel`` setting scores every channel an instrument writes (an ImageXpress
    writes each site once per wavelength), and a well's readout then averages the label-free
    frames with the stains'."""
    return [f"experiment {name}: its newest scored images are of {len(o.channels)} channels "
            f"({', '.join(o.channels[:6])}{', ...' if len(o.channels) > 6 else ''}), all averaged into the same "
            "well readouts; set the folder's channel to the label-free one the model was trained on (from the "
            "daemon's next start the others are skipped, those scored already taken out of the readouts)"
            for name, o in sorted(outcomes.items()) if len(o.channels) > 1]


def untimed_warnings(outcomes: dict[str, Any]) -> list[str]:  # dict[str, store.reads.Outcomes]
    """A warning per experiment none of whose newest scored images has a time: a readout is
    keyed by the scan (a scan index in the name or folders, else the hours since induction),
    and an image with neither gives none, so the plate stays empty while the daemon is healthy
    (files copied out of the instrument's TimePoint or acquisition folders, say)."""
    out = []
    for name, o in sorted(outcomes.items()):
        n = o.scored + o.qc_failed
        if n and o.untimed >= n:
            out.append(f"experiment {name}: its newest {n} scored images carry no time (no scan index in their names "
                       "or folders, and the folder sets no induction_time), so they give no well readouts; set the "
                       "folder's induction_time (each image is then timed by its file)")
    return out


def repeated_position_warnings(outcomes: dict[str, Any]) -> list[str]:  # dict[str, store.reads.Outcomes]
    """A warning per experiment some of whose newest scored images share well, field, channel,
    plane and time point with another scored image: the readout averages both, which is two
    reads of the plate under one time point (a folder copied in twice, two measurements of a
    layout whose scan index restarts and that nscmonitor does not tell apart), never one."""
    out = []
    for name, o in sorted(outcomes.items()):
        if not o.repeated:
            continue
        a, b = o.repeated_example
        out.append(f"experiment {name}: {o.repeated} of its newest scored images share well, field, channel, plane "
                   f"and time point with another image (e.g. {a} and {b}), and each pair is averaged into one "
                   "readout: two reads of the plate under one time point (remove the copy, or give each read's "
                   "folder its own plate or time with custom_profiles), or fields whose names give no field "
                   "number (then nothing is wrong)")
    return out


def mixed_plane_warnings(outcomes: dict[str, Any]) -> list[str]:  # dict[str, store.reads.Outcomes]
    """A warning per experiment whose newest scored images are of several z planes (or planes
    beside projections): with ``z = all`` a well's readout averages the projection with every
    out-of-focus plane (an ImageXpress writes each plane into its own ZStep folder)."""
    out = []
    for name, o in sorted(outcomes.items()):
        if len(o.planes) < 2:
            continue
        shown = ["projection" if p < 0 else str(p) for p in o.planes]
        out.append(f"experiment {name}: its newest scored images are of {len(o.planes)} z planes "
                   f"({', '.join(shown[:6])}{', ...' if len(shown) > 6 else ''}), all averaged into the same well "
                   "readouts; set the folder's z to \"projection\" or the plane to score (from the daemon's next "
                   "start the others are skipped, those scored already taken out of the readouts)")
    return out


def _daemon_verdict(repo: Any, d: Any, now: datetime) -> tuple[str, int]:
    from nscmonitor.ops.checks import backlog_stall
    from nscmonitor.store.reads import backlog_facts

    if d is None or d.state == "stopped":
        return "no daemon running", 3
    age = (now - d.heartbeat_at).total_seconds()
    if age > STALE_S:
        return f"stalled: no heartbeat for {age:.0f} s", 1
    bad = [w["path"] for w in d.watched if not w.get("reachable", True)]
    if bad:
        return f"watched folder unreachable: {', '.join(bad)}", 2
    stall = backlog_stall(*backlog_facts(repo.engine, now), now)
    return (stall, 1) if stall else ("healthy", 0)


def served_model_path(s: Settings, version: str | None) -> Path | None:
    """The model file behind a served version: the registry's version folder, else the file
    the daemon served it from (``--model``, kept in the store) where it is still there, else
    the configured model file (served as ``<version>-<sha8>``)."""
    if version is None:
        return None
    try:
        from nscmonitor.registry.registry import Registry
        from nscmonitor.store.db import open_readonly
        from nscmonitor.store.registry import served_file

        engine = open_readonly(s.database_url)
        try:
            for info in Registry(s.models_dir, engine).list():
                if info.version == version:
                    return Path(info.path)
            served = served_file(engine, version)
        finally:
            engine.dispose()
        if served is not None and Path(served.path).is_file():
            return Path(served.path)
    except Exception as exc:  # status reports; a registry it cannot read is not fatal here
        log.info("registry not readable for the engine build state: %s", exc)
    return s.model if s.model is not None and Path(s.model).is_file() else None


def engine_build_state(s: Settings, version: str | None, path: Path | None = None) -> dict | None:
    """This machine's engine build for the served version (engine-status.json beside the
    model): building since when, ready with its gate, or why fp32 serves. ``path``: the
    version's file where the caller has resolved it (``served_model_path``)."""
    path = path or served_model_path(s, version)
    if path is None:
        return None
    from nscmonitor.engines.autobuild import summary

    return summary(path, version)


def model_ood_state(s: Settings, version: str | None, path: Path | None = None) -> dict | None:
    """What the served version's out-of-distribution flag covers (``core.ood_record``), read
    from its file's metadata; None when the version or its file is not known here."""
    path = path or served_model_path(s, version)
    if path is None:
        return None
    from nscmonitor.engines.metadata import read_onnx_metadata

    try:
        return ood_record.summary(read_onnx_metadata(path).ood)
    except Exception as exc:  # the model check reports an unreadable model; status goes on
        log.info("%s: metadata not readable for the OOD summary: %s", path, exc)
        return None


def active_version(s: Settings) -> Callable[[], str | None]:
    """A deferred read of the registry's active version: exports call it only when no
    version was asked for, and a store without the registry answers None."""
    def active() -> str | None:
        try:
            from nscmonitor.registry.registry import Registry
            from nscmonitor.store.db import open_engine
        except ImportError:
            return None
        act = Registry(s.models_dir, open_engine(s.database_url, readonly=True)).active()
        return act.version if act else None

    return active


def model_integrity(s: Settings) -> dict | None:
    """The registry's active version checked against its registered SHA-256, as the daemon
    checks it before serving: a replaced file is named here with the reason the daemon refuses it."""
    try:
        from nscmonitor.registry.registry import Registry, integrity_problem
        from nscmonitor.store.db import open_engine

        act = Registry(s.models_dir, open_engine(s.database_url, readonly=True)).active()
    except Exception as exc:  # a database doctor cannot read is reported by its own check
        log.info("registry not readable for the model check: %s", exc)
        return None
    if act is None:
        return None
    problem = integrity_problem(act.version, Path(act.path), act.sha256)
    return {"version": act.version, "path": act.path, "ok": problem is None, "problem": problem}


# --- doctor ---------------------------------------------------------------------------------
def forecast_state(s: Settings) -> dict | None:
    """Which well forecast model the daemon serves: the configured file, or the version a
    retrain installed (``registry.forecasts``); None when none is configured."""
    from nscmonitor.core.errors import UserFacingError
    from nscmonitor.registry import forecasts as FR

    if s.forecast_model is None:
        return None
    try:
        rows = FR.history(s.models_dir)
    except UserFacingError as exc:
        return {"configured": str(s.forecast_model), "serving": None, "problem": str(exc)}
    serving = rows[-1].path if rows else str(s.forecast_model)
    return {"configured": str(s.forecast_model), "serving": serving,
            "version": rows[-1].version if rows else None, "installed_by_retraining": len(rows),
            "reason": rows[-1].reason if rows else None, "ood": FR.ood_state(Path(serving))}


def doctor_report(s: Settings) -> list[Check]:
    """Every check ``nscmonitor doctor`` prints, in order; each one reports, none raises."""
    checks = _runtime_checks() + _database_checks(s) + _watch_checks(s)
    checks += _model_file_checks(s) if s.model is not None else _active_engine_check(s)
    checks += _models_folder_checks(s)
    integrity = model_integrity(s)
    if integrity is not None:
        checks.append(("active model file", integrity["ok"],
                       integrity["problem"] or f"{integrity['version']}: SHA-256 matches the registry"))
    return checks + forecast_checks(s)


def forecast_checks(s: Settings) -> list[Check]:
    """The well forecast the daemon would serve: whether its file is a forecast model, and
    whether it flags frames unlike its training images (a model without the flag serves, so
    that line is not a failure, but it says so)."""
    state = forecast_state(s)
    if state is None:
        return []
    if state.get("problem"):
        return [("well forecast model", False, state["problem"])]
    ood = state["ood"]
    if ood.get("not_a_forecast_model") or "version" not in ood:  # unreadable, or not a forecast model
        return [("well forecast model", False, ood["why"])]
    return [("well forecast model", True, f"{ood['version']} ({state['serving']})"),
            ("well forecast OOD flag", True,
             f"threshold {ood['threshold']:.3g} ({ood['threshold_from']})" if ood["available"]
             else f"unavailable: {ood['why']}")]


def _runtime_checks() -> list[Check]:
    from nscmonitor.ops.runtime_packages import (TENSORRT_DISTRIBUTIONS, installed_versions, ort_flavour_check,
                                                 tensorrt_check)
    from nscmonitor.readers.formats import reader_status

    checks: list[Check] = []
    for mod, what in (("onnxruntime", "ONNX Runtime (CPU engine)"), ("torch", "PyTorch (training, reference engine)"),
                      ("tensorrt", "TensorRT (GPU engine)"), ("PySide6", "PySide6 (dashboard)")):
        ok = importlib.util.find_spec(mod) is not None
        checks.append((what, ok, "installed" if ok else "not installed"))
    checks.append(("ONNX Runtime packages", *ort_flavour_check(installed_versions())))
    trt = tensorrt_check(installed_versions(TENSORRT_DISTRIBUTIONS))
    if trt is not None:
        checks.append(("TensorRT version", *trt))
    try:
        import onnxruntime as ort

        checks.append(("ONNX Runtime providers", True, ", ".join(ort.get_available_providers())))
    except ImportError:
        pass
    checks.extend((f"{fmt} reader", ver is not None, note) for fmt, ver, note in reader_status())
    checks.append(("CPU", True, _cpu_line()))
    telemetry = _openvino_telemetry()
    if telemetry is not None:
        checks.append(("OpenVINO usage statistics", True, telemetry))
        checks.append(("OpenVINO CPU precisions", True, _openvino_precisions()))
    checks.append(_gpu_check())
    return checks


def _gpu_check() -> Check:
    """Which GPU engine this PC can have: TensorRT, else the trained network in fp16 on CUDA
    torch, else none (a GPU the daemon cannot use is worth saying)."""
    from nscmonitor.engines.autobuild_status import gpu_names

    if shutil.which("nvidia-smi") is None:
        return ("NVIDIA GPU", False, "no NVIDIA driver found (CPU engines serve)")
    gpus = gpu_names()
    named = ", ".join(gpus) if gpus else "nvidia-smi found but names no GPU"
    if importlib.util.find_spec("tensorrt") is not None:
        return ("NVIDIA GPU", True, f"{named}; TensorRT engines are built here")
    if importlib.util.find_spec("torch") is not None:
        return ("NVIDIA GPU", True, f"{named}; no TensorRT: the trained network serves in fp16 on CUDA torch "
                                    "(torch-cuda-fp16) once its build has gated it")
    return ("NVIDIA GPU", bool(gpus), f"{named}; neither TensorRT nor torch is installed, so CPU engines serve "
                                      "(pip install 'nscmonitor[gpu]')")


def _cpu_line() -> str:
    from nscmonitor.engines.ort import cpu_id, isa_flags

    return f"{cpu_id()}: {cpu_units(isa_flags())}"


def cpu_units(flags: tuple[str, ...] | list[str]) -> str:
    """What this CPU's instruction sets mean for the CPU engines, in the words a lab manager
    needs to judge the speed-ups ``status`` reports: int8 buys about 2x fp32 at best without
    VNNI, 3-4x with it, more on AMX (docs/performance.md)."""
    f = set(flags)
    if {"amx_int8", "amx_bf16"} <= f:
        unit = "int8 and bf16 on AMX tiles (int8 engines can run many times fp32)"
    elif "avx512_vnni" in f or "avx_vnni" in f:
        unit = "int8 with VNNI (int8 engines run up to 3-4x fp32)"
    elif "avx2" in f:
        unit = ("int8 without VNNI, through 16-bit sums (int8 engines run at most about 2x fp32 here: the "
                "int8 unit is about 1.8x the fp32 one)")
    elif "asimddp" in f or "i8mm" in f:
        unit = "ARM int8 dot products"
    else:
        unit = "no int8 dot-product instructions known to the engines (int8 may not be faster than fp32)"
    bf16 = ""
    if "avx2" in f or "avx512f" in f:
        bf16 = "; bf16 units" if "avx512_bf16" in f or "amx_bf16" in f else "; no bf16 units (CPU training runs fp32)"
    return unit + bf16 + "; engines are gated and timed for this CPU"


def _openvino_precisions() -> str:
    """What OpenVINO can run on this CPU, and what it means for the engine: with bf16 units the
    int8 engine's non-int8 layers may run bf16 (gated on their own), the faster variant serves."""
    from nscmonitor.engines.openvino import cpu_capabilities, has_bf16

    caps = cpu_capabilities()
    if not caps:
        return "OpenVINO cannot read this CPU's capabilities"
    return ", ".join(caps) + ("; bf16 units: an int8 engine's non-int8 layers may run bf16 where that passes its "
                              "own gate and is faster" if has_bf16() else "; no bf16 units: non-int8 layers run fp32")


def _openvino_telemetry() -> str | None:
    """None when OpenVINO is not installed (nothing to say)."""
    from nscmonitor.ops.runtime_packages import openvino_telemetry_check, openvino_telemetry_file

    if importlib.util.find_spec("openvino") is None:
        return None
    path = openvino_telemetry_file(platform.system(), str(Path.home()), os.environ.get("LOCALAPPDATA"))
    try:
        decision = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        decision = None
    return openvino_telemetry_check(decision)


def _database_checks(s: Settings) -> list[Check]:
    from nscmonitor.ops.checks import database_disk
    from nscmonitor.store.db import current_revision, head_revision, masked, open_engine, sqlite_path

    checks: list[Check] = []
    try:
        db_file = sqlite_path(s.database_url)
        if db_file is not None and not db_file.exists():
            raise FileNotFoundError(f"{db_file} does not exist (yet): 'nscmonitor run' or 'db upgrade' creates it")
        eng = open_engine(s.database_url, readonly=True)
        cur = current_revision(eng)
        head = head_revision()
        checks.append(("database", cur == head or cur is None,
                       f"{masked(s.database_url)} schema {cur or 'new'} (this version needs {head})"))
        disk = database_disk(s.database_url)
        if disk is not None:
            checks.append(("database disk space", disk.ok, disk.message))
    except Exception as exc:  # doctor reports, it does not crash
        checks.append(("database", False, f"{masked(s.database_url)}: {exc}"))
    return checks


def _models_folder_checks(s: Settings) -> list[Check]:
    """The registry's version folders grow with every retrain (model, checkpoint, calibration
    tiles, engines: over 0.4 GB a ResNet50 version); what they hold, what a prune would free,
    and the room left on their volume, so a full disk is seen weeks before it stops a build."""
    from nscmonitor.ops.checks import disk_space
    from nscmonitor.ops.disk_notice import prunable, what_prune_frees
    from nscmonitor.registry.prune import DEFAULT_KEEP, folder_bytes
    from nscmonitor.store.db import open_engine, sqlite_path

    versions_dir = s.models_dir / "versions"
    if not versions_dir.is_dir():
        return []
    try:
        du = shutil.disk_usage(versions_dir)
        disk = disk_space(du.free, du.total, where=str(s.models_dir))
        folders = [p for p in versions_dir.iterdir() if p.is_dir()]
        total = sum(folder_bytes(p) for p in folders)
        text = f"{total / 1e9:.2f} GB in {len(folders)} version folder(s); {disk.message}"
        db_file = sqlite_path(s.database_url)
        if db_file is None or db_file.exists():
            freed, n, runs = prunable(open_engine(s.database_url, readonly=True), s.models_dir)
            if n or runs:
                text += f"; {what_prune_frees(freed, n, runs)}, keeping {DEFAULT_KEEP} rollback targets"
        return [("models folder", disk.ok, text)]
    except Exception as exc:  # doctor reports, it does not crash
        return [("models folder", False, f"{versions_dir}: {exc}")]


def _watch_checks(s: Settings) -> list[Check]:
    from nscmonitor.ops.checks import drive_letter_warning

    checks: list[Check] = []
    for w in s.watch:
        ok = w.path.is_dir()
        note = (f"{w.path} ({'polling' if w.use_polling() else 'native events'}; "
                f"{f'channel {w.channel}' if w.channel else 'every channel scored'})")
        checks.append((f"watch {w.experiment}", ok, note if ok else f"{note}: not reachable"))
        msg = drive_letter_warning(w.path, is_windows=sys.platform == "win32")
        if msg:
            checks.append((f"watch {w.experiment} path", False, msg))
        if ok:
            checks.append(_pixel_size_check(w, s.max_pixels))
    return checks


#: directory entries the pixel-size check looks through for an image (a network share can hold millions)
_SAMPLE_ENTRIES = 2000


def _pixel_size_check(w: Any, max_pixels: int) -> Check:  # config.WatchFolder
    """Where the folder's pixel size comes from: without one (the file states none and the
    folder sets none) the daemon serves a frame at its own scale, and an image of another
    magnification is not caught (docs/training.md). Advice, not a failure: many exports
    state none (``readers.decode.PIXEL_SIZE_SOURCES`` lists where a TIFF is read)."""
    return f"watch {w.experiment} pixel size", True, pixel_size_source(w, max_pixels)[0]


def pixel_size_source(w: Any, max_pixels: int) -> tuple[str, bool]:  # config.WatchFolder
    """(where the folder's pixel size comes from, whether the folder should set one): the
    doctor's check, and the warning ``nscmonitor run`` prints at its start, since a lab that
    never runs the doctor would otherwise not learn that its frames are served at their own
    scale."""
    from nscmonitor.readers.decode import DecodeError, decode

    if w.pixel_size_um is not None:
        return f"{w.pixel_size_um:g} um/px for files that state none (the folder's pixel_size_um)", False
    sample = _an_image(w.path)
    if sample is None:
        return "no image in the folder yet to read it from", False
    try:
        um = decode(str(sample), max_pixels=max_pixels, content_hash=False, channel=w.channel).pixel_size_um
    except DecodeError as exc:
        return f"{sample.name}: not read ({exc.reason})", False
    if um is not None:
        return f"the files state it ({sample.name}: {um:.3g} um/px)", False
    from nscmonitor.readers.sidecars import stated_pixel_size

    beside = stated_pixel_size(sample, Path(w.path))
    if beside is not None:
        return (f"{sample.name} states none, but its acquisition's {beside[1].name} says {beside[0]:.4g} um/px: "
                f"set pixel_size_um = {beside[0]:.4g} for this folder, or its images are served at their own scale "
                "and another magnification is not caught"), True
    return (f"{sample.name} states none: an image of another magnification cannot be caught; "
            "set pixel_size_um for this folder"), True


def _an_image(root: Path) -> Path | None:
    """A TIFF of the folder: TIFF exports are where the pixel size goes missing (the native
    formats carry theirs in their metadata)."""
    seen = 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if f.lower().endswith((".tif", ".tiff")) and not f.startswith("."):
                return Path(folder) / f
        seen += len(files) + len(dirs)
        if seen > _SAMPLE_ENTRIES:
            return None
    return None


def _model_file_checks(s: Settings) -> list[Check]:
    """The configured model file: its metadata, this machine's engine build and the engine
    that would serve it."""
    checks: list[Check] = []
    try:
        from nscmonitor.engines.metadata import read_onnx_metadata

        meta = read_onnx_metadata(s.model)
        checks.append(("model", True, f"{s.model}: {meta.name} {meta.version}, classes {', '.join(meta.classes)}"))
        checks.append(("out-of-distribution flag", True, ood_record.line(ood_record.summary(meta.ood))))
    except Exception as exc:  # report any model problem as a failed check
        checks.append(("model", False, f"{s.model}: {exc}"))
    try:
        from nscmonitor.engines.autobuild import summary

        build = summary(s.model)
        checks.append(("engine build", build["state"] in ("ready", "building"), build["message"]))
    except Exception as exc:  # report, never crash
        checks.append(("engine build", False, str(exc)))
    try:
        from nscmonitor.engines.select import select

        sel = select(s.model, s.engine, batch_size=s.batch_size, threads=s.threads, cache_dir=s.models_dir / "engines")
        checks.append(("engine in use", True, sel.engine.name + "".join(f"; skipped {b}: {w}" for b, w in sel.skipped)))
    except Exception as exc:  # report, never crash
        checks.append(("engine in use", False, str(exc)))
    return checks


def _active_engine_check(s: Settings) -> list[Check]:
    """The registry's active version and this machine's engine build for it."""
    try:
        from nscmonitor.registry.registry import Registry
        from nscmonitor.store.db import open_engine

        act = Registry(s.models_dir, open_engine(s.database_url, readonly=True)).active()
        if act is None:
            return []
        from nscmonitor.engines.autobuild import summary

        build = summary(Path(act.path), act.version)
        return [("active model", Path(act.path).is_file(), f"{act.version} ({act.path})"),
                ("out-of-distribution flag", True, ood_record.line(ood_record.summary((act.meta or {}).get("ood")))),
                ("engine build", build["state"] in ("ready", "building"), build["message"])]
    except Exception as exc:  # doctor reports, it does not crash
        return [("active model", False, str(exc))]
