"""``nscmonitor demo`` (and ``make demo``): the whole product on a simulated plate.

1. labelled tiles from the simulator -> a small real model (trained once, then cached);
2. this machine's engine is built for it, as after any training run: int8 (OpenVINO, its
   stem and OOD products or all its non-int8 layers in bf16 where the CPU has bf16 units and
   that passes its own gate and is faster, or ONNX Runtime; TensorRT on an NVIDIA GPU), calibrated and gated against the fp32 model on the
   model's own calibration set, timed against it, and cached beside the model;
3. a well forecast (the time-aware second stage: each well's frames since induction) is
   trained on a simulated time-lapse export (once, then cached; ``--no-forecast`` skips it);
4. the daemon watches an empty folder while the simulated microscope writes a 96-well
   plate into it (several conditions, five days compressed into minutes), served by that
   engine (fp32 when the gate refused it or it is slower than fp32 here, saying why) and
   forecasting each well as its frames arrive;
5. the dashboard shows the plate as it is acquired (or, with no display, its main window
   is rendered to a PNG at the end);
6. the tidy CSV reports are written (readouts, images, forecasts), the forecast is set beside
   the per-image readout at 24, 48 and 72 h and in each well's earliest confident call, and the
   fp32 and built engines' speeds on the plate's frames are printed side by side.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nscmonitor.core.domain import OUT_OF_FOCUS
from nscmonitor.core.errors import UserFacingError

if TYPE_CHECKING:
    from nscmonitor.config import Settings
    from nscmonitor.core.calibration import CallRule
    from nscmonitor.engines.base import Engine

log = logging.getLogger(__name__)

EXPERIMENT = "DEMO-NSC"
WELLS = tuple(f"{r}{c:02d}" for r in "ABCD" for c in range(1, 13))


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _model(out: Path, retrain: bool, given: Path | None = None) -> Path:
    """The given model (e.g. a full training run's model.onnx), checked before anything is
    simulated, or the demo model trained once on simulator tiles and cached."""
    if given is not None:
        from nscmonitor.engines.metadata import MetadataError, read_onnx_metadata

        try:
            read_onnx_metadata(given)
        except (MetadataError, OSError) as exc:
            raise UserFacingError(f"--model {given}: not a usable nscmonitor model ({exc})") from exc
        return given
    tiles = out / "tiles"
    _render(tiles, _demo_export(), "labelled training tiles")
    try:
        from nscmonitor.training.demo_training import demo_model
    except ImportError as exc:
        raise SystemExit(f"the demo trains its model with torch: install the train extra ({exc})") from exc
    _say("training the demo model (cached after the first run)")
    t0, c0 = time.perf_counter(), time.process_time()
    path = demo_model(out / "model", tiles, force=retrain)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if cpu > 1.0:
        _say(f"demo model ready in {wall:.0f} s ({cpu:.0f} s of CPU time; load average "
             f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    return path


def _demo_export() -> dict[str, Any]:
    """The demo's training data (docs/training.md, "Demo model"): sixteen plates of the demo
    plate's six recipes (15 train and validate, the last is the test plate), eight wells per
    condition, one 224 px field per well at 48-120 h, from the demo microscope's 8-bit camera:
    many plates and wells with few images each (variety beats repetition), from the hours the
    model is trained and judged on."""
    from nscmonitor.simulate.culture import DEFAULT_CONDITIONS

    return {"plates": 16, "tile_size": 224, "seed": 0, "fields": 1, "grid": (1, 1), "wells_per_condition": 8,
            "hours": (48.0, 72.0, 96.0, 120.0), "bit_depth": 8, "conditions": tuple(DEFAULT_CONDITIONS)}


def _forecast_export() -> dict[str, Any]:
    """The well forecast's training data: the demo's six recipes on eight plates (six train,
    one validates, one tests), one 224 px field per well scanned every 8 h from induction to
    120 h as the demo plate is, from the same 8-bit camera: the forecast reads each well's
    time-lapse from its induction (0 h) frame on."""
    from nscmonitor.simulate.culture import DEFAULT_CONDITIONS

    return {"plates": 8, "tile_size": 224, "seed": 0, "fields": 1, "grid": (1, 1), "wells_per_condition": 8,
            "hours": tuple(float(h) for h in range(0, 121, 8)), "bit_depth": 8,
            "conditions": tuple(DEFAULT_CONDITIONS)}


def _render(tiles: Path, export: dict[str, Any], what: str) -> None:
    """Render a labelled export from the simulator, unless the one there was made with the
    same settings."""
    if _export_is_current(tiles, export):
        return
    from rich.progress import Progress

    from nscmonitor.simulate.labelled_tiles import export_tiles

    _say(f"rendering {what} from the simulator (once)")
    shutil.rmtree(tiles, ignore_errors=True)
    with Progress() as prog:
        task = prog.add_task("tiles", total=None)
        export_tiles(tiles, **export, progress=lambda done, total: prog.update(task, completed=done, total=total),
                     workers=os.cpu_count() or 1)


def _forecast(out: Path, retrain: bool) -> Path | None:
    """The demo's well forecast (docs/training.md, "Plate-aware early reading and the well
    forecast"), trained once and cached; None when torch is missing (said once)."""
    try:
        from nscmonitor.training.demo_training import demo_forecast
    except ImportError as exc:
        _say(f"no well forecast: training it needs torch, the train extra ({exc})")
        return None
    tiles = out / "forecast-tiles"
    _render(tiles, _forecast_export(), "a time-lapse export for the well forecast")
    _say("training the well forecast (cached after the first run)")
    path = out / "forecast" / "forecast.onnx"
    before = path.stat().st_mtime_ns if path.is_file() else None
    t0 = time.perf_counter()
    demo_forecast(out / "forecast", tiles, force=retrain)
    if path.stat().st_mtime_ns != before:
        _say(f"well forecast trained in {time.perf_counter() - t0:.0f} s; its held-out figures are in "
             f"{path.with_name('forecast_metrics.json')}")
    return path


def _export_is_current(tiles: Path, want: dict[str, Any] | None = None) -> bool:
    """An export left by a demo with other export settings (plates, fields, grid, wells, hours,
    bit depth, conditions) is rendered again, so its model, cached by data hash, is retrained too."""
    import json

    try:
        info = json.loads((tiles / "tiles.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    want = want or _demo_export()
    same = all(info.get(k) == want[k] for k in ("plates", "fields", "wells_per_condition", "bit_depth"))
    return ((tiles / "tiles.csv").is_file() and same and info.get("grid") == list(want["grid"])
            and info.get("hours") == list(want["hours"]) and sorted(info.get("conditions", {})) == sorted(want["conditions"]))


def _engine(model: Path, tiles: Path | None) -> None:
    """Build on arrival, as ``nscmonitor train`` does after training: the daemon started next
    then serves the gated engine. A demo model cached before training wrote its own
    calibration set is calibrated from the demo's tiles export instead."""
    from nscmonitor.engines import autobuild
    from nscmonitor.engines.calibration import model_tiles_path

    cal = None
    if not model_tiles_path(model).is_file() and tiles is not None and (tiles / "tiles.csv").is_file():
        cal = tiles
    _say("building this machine's engine for the model (int8, gated against fp32 on its held-out tiles; "
         "cached after the first run)")
    status = autobuild.ensure(model, calibration_dir=cal)
    _say(f"engine: {autobuild.describe(status)}")


def frames_per_s(engine: Engine, paths: list[Path], *, batch_size: int, min_seconds: float = 3.0) -> float:
    """Frames per second through decode, the model's preprocessing and ``engine``: the part
    of the daemon's work an engine changes, on the plate's own frames."""
    from nscmonitor.readers.decode import decode
    from nscmonitor.scoring.preprocess import Preprocess

    pre = Preprocess.from_metadata(engine.metadata)
    n, t0 = 0, time.perf_counter()
    while n < len(paths) or time.perf_counter() - t0 < min_seconds:
        dec = decode(paths[n % len(paths)])
        tiles = pre.tiles(dec.pixels, factor=pre.factor(dec.pixel_size_um)).tiles
        for i in range(0, len(tiles), batch_size):
            engine.infer(tiles[i:i + batch_size])
        n += 1
    return n / (time.perf_counter() - t0)


def _speeds(model: Path, plate: Path, settings: Settings) -> None:
    """fp32 and the engine built here, side by side on the same frames, and which of them the
    daemon serves (in auto mode a built int8 engine slower than fp32 here does not serve)."""
    from nscmonitor.engines import autobuild
    from nscmonitor.engines.base import EngineError
    from nscmonitor.engines.metadata import read_onnx_metadata
    from nscmonitor.engines.select import canonical, make_engine, select

    paths = sorted(plate.glob("*.tif"))[:24]
    if not paths:
        return
    meta = read_onnx_metadata(model)
    cache = settings.models_dir / "engines"
    try:
        served = select(model, settings.engine, batch_size=settings.batch_size, threads=settings.threads,
                        cache_dir=cache).engine
    except EngineError as exc:
        _say(f"speed comparison skipped: {exc}")
        return
    engines = [make_engine("ort-cpu", model, meta, batch_size=settings.batch_size, threads=settings.threads,
                           cache_dir=None)]
    built = autobuild.read_status(model)
    if built is not None and built.state == "ready" and built.engine not in (served.name, engines[0].name):
        try:
            engines.append(make_engine(canonical(built.engine), model, meta, batch_size=settings.batch_size,
                                       threads=settings.threads, cache_dir=cache))
        except EngineError as exc:
            _say(f"the built engine {built.engine} cannot be timed: {exc}")
    served.close()
    if served.name != engines[0].name:
        engines.append(served)
    rows = []
    for engine in engines:
        engine.load()
        try:
            rows.append((engine.name, frames_per_s(engine, paths, batch_size=settings.batch_size)))
        finally:
            engine.close()
    _say(f"speed on {len(paths)} of the plate's frames (decode + preprocessing + engine, frames/s):")
    for name, fps in rows:
        ratio = f"  ({fps / rows[0][1]:.1f}x fp32)" if name != rows[0][0] else ""
        mark = "  <- the daemon serves this" if name == served.name else ""
        _say(f"  {name:<16} {fps:7.1f}{ratio}{mark}")


TIE = 0.05  # two fates whose live-cell shares differ by less are co-dominant (see plate_summary)
FATES = ("neuron", "astrocyte", "oligodendrocyte", "undifferentiated")


def live_shares(manifest: Path, from_h: float) -> dict[tuple[str, float], tuple[str, dict[str, float]]]:
    """(well, elapsed h) -> (condition, share of the well's live cells per fate) from the
    simulator's ground-truth manifest, summed over the well's fields at that scan."""
    counts: dict[tuple[str, float], dict[str, float]] = {}
    cond: dict[tuple[str, float], str] = {}
    with manifest.open(newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            h = round(float(r["elapsed_h"]), 3)
            if h < from_h:
                continue
            c = counts.setdefault((r["well"], h), dict.fromkeys(FATES, 0.0))
            for f in FATES:
                c[f] += float(r[f"n_{f}"])
            cond[(r["well"], h)] = r["condition"]
    return {k: (cond[k], {f: v / (sum(c.values()) or 1.0) for f, v in c.items()}) for k, c in counts.items()}


def right_call(call: str, shares: dict[str, float], tie: float = TIE) -> bool:
    """A well readout is right when its top class is the fate most of the well's live cells
    have at that scan, or one within ``tie`` of it: a stain counting a few hundred cells
    cannot tell such fates apart (binomial SE ~0.025 at 0.4 of 400 cells) and a biologist
    would call that well mixed, so either call is defensible."""
    return shares.get(call, 0.0) >= max(shares.values()) - tie


def plate_summary(report: Path, manifest: Path, from_h: float = 72.0) -> list[str]:
    """How the model read the demo plate, per condition: well readouts from ``from_h`` judged
    against what the well's live cells are at that scan (the simulator's truth: in a mixed
    well astrocytes outgrow neurons, and most cells of a low-dose well stay undifferentiated),
    and, beside it, against the recipe's nominal fate."""
    from nscmonitor.simulate.culture import DEFAULT_CONDITIONS

    truth = live_shares(manifest, from_h)
    probs: dict[tuple[str, float], dict[str, float]] = {}
    with report.open(newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r["elapsed_h"] and float(r["elapsed_h"]) >= from_h and r["prob_mean"]:
                probs.setdefault((r["well"], round(float(r["elapsed_h"]), 3)), {})[r["class"]] = float(r["prob_mean"])
    right: dict[str, list[tuple[int, int]]] = {}
    for key, p in probs.items():
        if key not in truth or not p:
            continue
        cond, shares = truth[key]
        call = max(p, key=p.get)
        nominal = DEFAULT_CONDITIONS[cond].label if cond in DEFAULT_CONDITIONS else ""
        right.setdefault(cond, []).append((int(right_call(call, shares)), int(call == nominal)))
    lines = [f"the demo plate's well readouts from {from_h:g} h, right = top class is the fate most of the "
             f"well's live cells have at that scan (or one within {TIE:.2f} of its share); beside it, the "
             f"recipe's nominal fate:",
             f"  {'condition':<26} {'live cells':>10} {'recipe':>8}"]
    lines += [f"  {cond:<26} {sum(a for a, _ in v):>4}/{len(v):<5} {sum(b for _, b in v):>3}/{len(v)}"
              for cond, v in sorted(right.items())]
    return lines


def qc_summary(images: Path, manifest: Path) -> list[str]:
    """What QC made of the simulated microscope's autofocus failures (its manifest says which
    frames lost focus): how many frames failed as out of focus, how many of those were the
    failures, and which failures passed unjudged (a field with a single scan)."""
    with manifest.open(newline="", encoding="utf-8") as fh:
        lost = {Path(r["path"]).name for r in csv.DictReader(fh) if r.get("autofocus_fail") == "True"}
    out_of_focus, other, unjudged, n = set(), 0, set(), 0
    with images.open(newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            name = Path(r["path"]).name
            n += 1
            if r["qc_passed"] == "0":
                if r["qc_reason"].startswith(OUT_OF_FOCUS):
                    out_of_focus.add(name)
                else:
                    other += 1
            elif name in lost and not r["focus_ratio"]:
                unjudged.add(name)
    caught = len(out_of_focus & lost)
    return [f"QC: {len(out_of_focus)} of {n} frames failed as out of focus (each judged against its field's "
            f"nearest scans, a field's first scan once its next one is scored; left out of the readouts): {caught} "
            f"of the {len(lost)} frames whose autofocus the simulated microscope failed, and "
            f"{len(out_of_focus) - caught} others; failures never judged: {len(unjudged)}; other QC failures: {other}"]


def end_points(manifest: Path) -> dict[str, tuple[str, dict[str, float]]]:
    """well -> (condition, share of its live cells per fate at its last scan): what an
    end-point stain of the well would count."""
    shares = live_shares(manifest, 0.0)
    last: dict[str, float] = {}
    for well, h in shares:
        last[well] = max(last.get(well, h), h)
    return {well: shares[(well, h)] for well, h in last.items()}


def _class_probs(path: Path) -> dict[tuple[str, float], dict[str, float]]:
    """(well, elapsed h) -> class probabilities, from the readouts CSV (``class`` and
    ``prob_mean`` per row) or the forecasts CSV (``p_<class>`` columns)."""
    out: dict[tuple[str, float], dict[str, float]] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if not r.get("elapsed_h"):
                continue
            key = (r["well"], round(float(r["elapsed_h"]), 3))
            if "class" in r:
                if r.get("prob_mean"):
                    out.setdefault(key, {})[r["class"]] = float(r["prob_mean"])
            else:
                out[key] = {k[2:]: float(v) for k, v in r.items() if k.startswith("p_") and v}
    return out


def _flagged(path: Path) -> set[tuple[str, float]]:
    """(well, elapsed h) whose readout rests on flagged images (readouts CSV: ``n_ood`` > 0)
    or whose forecast is flagged (forecasts CSV: ``ood`` 1): left out of calls, as the
    dashboard and the report leave them out."""
    out: set[tuple[str, float]] = set()
    with path.open(newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            flagged = float(r.get("n_ood") or 0) > 0 if "class" in r else r.get("ood") == "1"
            if r.get("elapsed_h") and flagged:
                out.add((r["well"], round(float(r["elapsed_h"]), 3)))
    return out


def forecast_summary(forecasts: Path, report: Path, manifest: Path, hours: tuple[float, ...] = (24.0, 48.0, 72.0)
                     ) -> list[str]:
    """The well forecast against the per-image readout at early hours, per condition: a well is
    right at an hour when its top class is the fate most of its live cells have at the
    well's *last* scan (within the tie allowance): what the forecast predicts from the frames
    up to that hour, and what an end-point stain of the well would show."""
    ends = end_points(manifest)
    fc, per_image = _class_probs(forecasts), _class_probs(report)
    right: dict[str, dict[tuple[str, float], list[int]]] = {}
    for well, (cond, truth) in ends.items():
        for what, probs in (("forecast", fc), ("image", per_image)):
            for h in hours:
                p = probs.get((well, round(h, 3)))
                if p:
                    right.setdefault(cond, {}).setdefault((what, h), []).append(
                        int(right_call(max(p, key=p.get), truth)))
    head = "".join(f"{f'{h:g} h':>9}" for h in hours)
    lines = [f"the well forecast (each well's frames from induction up to that hour) beside the per-image readout "
             f"(that hour's frames alone), right = top class is the fate most of the well's live cells have at "
             f"its last scan (or one within {TIE:.2f} of its share):",
             f"  {'':<26}{'forecast':^{9 * len(hours)}}   {'per-image':^{9 * len(hours)}}",
             f"  {'condition':<26}{head}   {head}"]
    for cond, v in sorted(right.items()):
        cells = ["".join(f"{(f'{sum(x)}/{len(x)}' if (x := v.get((what, h))) else '-'):>9}" for h in hours)
                 for what in ("forecast", "image")]
        lines.append(f"  {cond:<26}{cells[0]}   {cells[1]}")
    return lines


def calls_summary(forecasts: Path, report: Path, manifest: Path, forecast_rule: CallRule,
                  image_rule: CallRule) -> list[str]:
    """Each well's earliest confident call (``report.calls.confident_call``) from the forecast's
    time course and from the per-image readout's, each under its own model's rule and without
    the time points each model's own out-of-distribution score flags, judged against the fate
    most of the well's live cells have at its last scan: per condition, wells called, wrong
    calls and the median hours to a call."""
    import numpy as np

    from nscmonitor.report.calls import confident_call

    ends = end_points(manifest)
    stats: dict[str, dict[str, list]] = {}
    for what, path, rule in (("forecast", forecasts, forecast_rule), ("image", report, image_rule)):
        courses: dict[str, dict[float, dict[str, float]]] = {}
        flagged = _flagged(path)
        for (well, h), p in _class_probs(path).items():
            courses.setdefault(well, {})[h] = p
        for well, (cond, truth) in ends.items():
            cell = stats.setdefault(cond, {}).setdefault(what, [0, 0, 0, []])  # wells, called, wrong, hours
            cell[0] += 1
            hours = sorted(courses.get(well, {}))
            if not hours:
                continue
            probs = np.array([[courses[well][h].get(f, np.nan) for f in FATES] for h in hours])
            call = confident_call(probs, np.array(hours), FATES, threshold=rule.threshold, min_points=rule.min_points,
                                  flagged=np.array([(well, h) in flagged for h in hours]))
            if call is not None:
                cell[1] += 1
                cell[2] += int(not right_call(call.cls, truth))
                cell[3].append(call.elapsed_h)

    def text(cell: list) -> str:
        wells, called, wrong, hours = cell
        median = f"{float(np.median(hours)):.0f} h" if hours else "-"
        return f"{called:>3}/{wells:<3}{wrong:>5}{median:>8}"

    lines = [f"each well's earliest confident call (forecast: p >= {forecast_rule.threshold:g} over "
             f"{forecast_rule.min_points}; per-image readout: p >= {image_rule.threshold:g} over "
             f"{image_rule.min_points}; each its model's rule), wrong = not the fate most of its live cells have "
             f"at its last scan:",
             f"  {'':<26}{'forecast':^20}   {'per-image':^20}",
             f"  {'condition':<26}{'called wrong  median':>20}   {'called wrong  median':>20}"]
    empty = [0, 0, 0, []]
    lines += [f"  {cond:<26}{text(v.get('forecast', empty)):>20}   {text(v.get('image', empty)):>20}"
              for cond, v in sorted(stats.items())]
    return lines


def _forecast_rule(path: Path) -> CallRule:
    """The call rule train-forecast chose on the forecast's validation wells (the default rule
    for a file that carries none)."""
    from nscmonitor.core.calibration import CALL_KEY, call_rule_of
    from nscmonitor.scoring.forecast import load_forecast_model

    rule = ((load_forecast_model(path).meta.get("metrics") or {}).get("calls") or {}).get("rule")
    return call_rule_of({CALL_KEY: rule} if rule else None)


def _plate_map_csv(path: Path) -> Path:
    from nscmonitor.simulate.culture import default_plate_map

    pm = default_plate_map(96)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["well", "condition"])
        for well in WELLS:
            w.writerow([well, pm.wells[well]])
    return path


def _display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or sys.platform in ("win32", "darwin")


def _gui_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("PySide6") is not None and importlib.util.find_spec("nscmonitor.gui.cli") is not None


def run_demo(out: Path, *, speed: float, hours: float, interval: float, retrain: bool, gui: str,
             model: Path | None = None, forecast: bool = True) -> int:
    from nscmonitor.daemon import build_runner
    from nscmonitor.report.export import default_images_path, export_images, export_readouts
    from nscmonitor.report.forecasts_csv import default_forecasts_path, export_forecasts
    from nscmonitor.simulate.microscope import MANIFEST_NAME
    from nscmonitor.store.reads import Repo

    out.mkdir(parents=True, exist_ok=True)
    given = model
    model = _model(out, retrain, model)
    _engine(model, out / "tiles" if given is None else None)
    from nscmonitor.engines.metadata import read_onnx_metadata

    meta = read_onnx_metadata(model)
    _say(f"model: {model} ({meta.arch}, {meta.scheme}, {meta.input_size} px tiles); its validation numbers are "
         f"demo numbers from a few epochs on simulated data, not a claim about real cultures")
    forecast_model = _forecast(out, retrain) if forecast else None
    plate = out / "plate"
    settings = _fresh_settings(out, plate, forecast_model)
    url = settings.database_url
    runner = build_runner(settings, model=model)
    runner.setup()
    daemon = threading.Thread(target=runner.run, name="daemon", daemon=True)
    daemon.start()
    _say(f"daemon watching {plate} with {runner.model.engine.name}")
    viewer = None
    if gui == "window" or (gui == "auto" and _display() and _gui_available()):
        viewer = subprocess.Popen([sys.executable, "-m", "nscmonitor", "gui", "--db", url, "--experiment", EXPERIMENT])
        _say("dashboard opened; it updates while the plate is acquired")
    t0 = time.monotonic()
    _acquire(runner, daemon, plate, speed=speed, hours=hours, interval=interval)
    runner.stop_event.set()
    daemon.join(60)
    repo = Repo(runner.store.engine)
    report = out / "report.csv"
    n, version = export_readouts(repo, EXPERIMENT, report)
    export_images(repo, EXPERIMENT, default_images_path(report))
    _say(f"scored {runner.timings.images} frames in {time.monotonic() - t0:.0f} s")
    _say(f"report: {report} ({n} rows, model {version}); per image: {default_images_path(report)}")
    for line in plate_summary(report, plate / MANIFEST_NAME) + qc_summary(default_images_path(report),
                                                                          plate / MANIFEST_NAME):
        _say(line)
    forecasts = default_forecasts_path(report)
    forecasts.unlink(missing_ok=True)
    if forecast_model is not None and export_forecasts(runner.store.engine, EXPERIMENT, forecasts):
        _say(f"well forecasts: {forecasts}")
        for line in forecast_summary(forecasts, report, plate / MANIFEST_NAME):
            _say(line)
        from nscmonitor.core.calibration import call_rule_of

        for line in calls_summary(forecasts, report, plate / MANIFEST_NAME, _forecast_rule(forecast_model),
                                  call_rule_of(meta.extra)):
            _say(line)
    _speeds(model, plate, settings)
    _show_dashboard(out, url, viewer, gui)
    return 0


def _fresh_settings(out: Path, plate: Path, forecast: Path | None = None) -> Settings:
    """An empty plate folder and database for each run, so the demo shows acquisition from
    the first frame; models (and their engines) stay cached under ``out``. ``forecast``: the
    well forecast the daemon's second stage serves."""
    from nscmonitor.config import parse_settings

    db = out / "nscmonitor.db"
    shutil.rmtree(plate, ignore_errors=True)
    for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        p.unlink(missing_ok=True)
    plate.mkdir(parents=True)
    return parse_settings({
        "database_url": f"sqlite:///{db}", "models_dir": str(out / "models"), "log_dir": str(out / "logs"),
        "watch": [{"path": str(plate), "experiment": EXPERIMENT, "profile": "incucyte", "quiet_seconds": 1.0,
                   "rescan_interval": 30.0, "plate_map": str(_plate_map_csv(out / "platemap.csv"))}],
        **({"forecast_model": str(forecast)} if forecast is not None else {}),
    }, env={})


def _acquire(runner: Any, daemon: threading.Thread, plate: Path, *, speed: float, hours: float,
             interval: float) -> None:
    """The simulated microscope writes the plate while the daemon scores it; returns when
    every frame is scored (at most an hour), or the daemon thread ended."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from nscmonitor.simulate.demo_experiment import demo_plate

    n_frames = len(WELLS) * 2 * (int(hours // interval) + 1)
    _say(f"simulated microscope: {len(WELLS)} wells x 2 fields x {int(hours // interval) + 1} scans "
         f"({n_frames} frames, {hours:g} h every {interval:g} h, {speed:g}x real time)")
    t0 = time.monotonic()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as prog:
        acq = prog.add_task("acquired", total=n_frames)
        scored = prog.add_task("scored  ", total=n_frames)
        runner.on_batch = lambda n: prog.advance(scored, n)
        stop = threading.Event()
        scope = threading.Thread(target=lambda: demo_plate(plate, speed=speed, hours=hours, interval_h=interval,
                                                           wells=WELLS, stop_event=stop), daemon=True)
        scope.start()
        while scope.is_alive():
            prog.update(acq, completed=sum(1 for p in plate.glob("*.tif")))
            time.sleep(0.5)
        prog.update(acq, completed=sum(1 for p in plate.glob("*.tif")))
        while runner.timings.images < n_frames and time.monotonic() - t0 < 3600:
            if not daemon.is_alive():
                break
            time.sleep(0.5)


def _show_dashboard(out: Path, url: str, viewer: subprocess.Popen | None, gui: str) -> None:
    """Wait for the open dashboard window, or render it to a PNG where there is no display."""
    if viewer is None and gui != "none" and _gui_available():
        shot = out / "dashboard.png"
        res = subprocess.run([sys.executable, "-m", "nscmonitor", "gui", "--db", url, "--experiment", EXPERIMENT,
                              "--screenshot", str(shot)], env={**os.environ, "QT_QPA_PLATFORM": os.environ.get(
                                  "QT_QPA_PLATFORM", "offscreen")}, capture_output=True, text=True)
        if res.returncode == 0:
            _say(f"no display here: the dashboard's main window was rendered to {shot}")
        else:
            _say(f"could not render the dashboard: {res.stderr.strip()[-300:]}")
    elif viewer is not None:
        _say("close the dashboard window to finish")
        viewer.wait()


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(Path(args.out), speed=args.speed, hours=args.hours, interval=args.interval,
                    retrain=args.retrain, gui=args.gui, model=Path(args.model) if args.model else None,
                    forecast=not args.no_forecast)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="simulate a plate, score it live, open the dashboard, write the report",
                       description=__doc__)
    p.add_argument("--out", default="demo-out", help="folder for the demo's data, model, database and report")
    p.add_argument("--speed", type=float, default=3600.0, help="simulated seconds per real second (default 3600)")
    p.add_argument("--hours", type=float, default=120.0, help="culture time to simulate (default 120 h)")
    p.add_argument("--interval", type=float, default=8.0, help="hours between scans (default 8)")
    p.add_argument("--retrain", action="store_true", help="train the demo model (and the well forecast) again even if cached")
    p.add_argument("--model", help="score with this model.onnx (e.g. a full 'nscmonitor train' run's) instead of "
                                   "training the small demo model")
    p.add_argument("--no-forecast", action="store_true",
                   help="no well forecast (the time-aware second stage; its first run renders a time-lapse export "
                        "and trains it, a few minutes)")
    p.add_argument("--gui", choices=("auto", "window", "none"), default="auto",
                   help="open the dashboard (auto: when a display is there, else render a PNG at the end)")
    p.set_defaults(func=cmd_demo)
