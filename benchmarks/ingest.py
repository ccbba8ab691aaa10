"""End-to-end ingest benchmark: files/s and file-complete -> stored-prediction latency.

Two phases on this machine, in one run:
* backlog: N frames (default 500 x 1408x1040 uint16, like an Incucyte camera) already in
  the folder; the daemon works through them (``--once``): files/s and the share of time in
  decode, preprocess, inference and store;
* live: frames written one by one at a steady pace below the measured throughput while the
  daemon watches with real events; latency = stored-prediction time - file mtime
  (median, p95), with the configured quiet period (readiness) set to 0 s and 1 s.

Prints a table and writes JSON (benchmarks/results/ingest.json).

``--side-by-side`` measures what a lab gets from a trained model, all in one run: a ResNet50
from the project's training (96 px tiles, like docs/training.md; trained here for a few
epochs unless ``--model`` is given: speed does not depend on accuracy, the int8 gate does)
on 1408x1040 16-bit frames at its full tiling; backlog frames/s with the fp32 ONNX and with
the engine built automatically for this machine (``nscmonitor engine autobuild``, as register
and train do); the engine alone on the same tiles (so the pipeline's share and where the time
goes are visible), and, when the build kept layers fp32 to pass its gate, the same model all
int8 on those tiles (what those layers cost; the file its gate refused); the engine's share of
this machine's int8 bound (``--int8-peak-gops`` or ``--cpu-peak FILE``, the output of
../shared/tools/cpu_peak.sh or a JSON with ``int8_gops``; on a CPU with AMX, where oneDNN runs
int8 on the tile unit and the AVX-512 figure is no bound, the output of benchmarks/amx_peak.sh;
on a CPU without AVX-512, which cpu_peak.sh does not measure, that of benchmarks/avx2_peak.sh;
ResNet50 is 8.2 GFLOP per 224 px image, scaled by tile area); and the p95 latency from file
complete to stored prediction with frames arriving at 1 per 2 s. JSON goes to
benchmarks/results/ingest-side-by-side.json.
``--during-build`` starts a daemon on a backlog with ``--model`` and no engine built here, as
after registering a model: the daemon builds in the background and scores meanwhile; the table
says which engine scored how many frames from when to when (JSON:
benchmarks/results/ingest-during-build.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import tifffile

from nscmonitor.config import parse_settings
from nscmonitor.daemon import build_runner
from nscmonitor.engines.tiny import build_tiny_classifier


def frame(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    base = rng.normal(1200, 60, shape).astype(np.float32)
    ys = rng.integers(0, shape[0], 300)
    xs = rng.integers(0, shape[1], 300)
    base[ys, xs] += 2000
    return np.clip(base, 0, 4095).astype(np.uint16)


def write_frames(folder: Path, n: int, shape: tuple[int, int], seed: int = 0, start: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    protos = [frame(rng, shape) for _ in range(8)]
    out = []
    for i in range(start, start + n):
        row, col = divmod(i % 96, 12)
        name = f"BENCH_{'ABCDEFGH'[row]}{col + 1}_{i // 96 % 9 + 1}_{i // 864:02d}d00h00m.tif"
        p = folder / name
        tifffile.imwrite(p, np.roll(protos[i % 8], i, axis=1))
        out.append(p)
    return out


def latencies(db: Path) -> list[float]:
    with sqlite3.connect(db) as c:
        rows = c.execute("select mtime, scored_at from images where status='done'").fetchall()
    return [stored_epoch(scored) - mtime for mtime, scored in rows]


def stored_epoch(scored_at: str) -> float:
    """A stored timestamp (UTC, written with or without its zone) as seconds since the epoch."""
    from datetime import timezone

    ts = datetime.fromisoformat(scored_at)
    return (ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)).timestamp()


def settings(tmp: Path, watch: Path, quiet: float, db_name: str, engine: str = "auto", threads: int = 0):
    return parse_settings({"database_url": f"sqlite:///{tmp / db_name}", "models_dir": str(tmp / "models"),
                           "engine": engine, "threads": threads,
                           "watch": [{"path": str(watch), "experiment": "bench", "quiet_seconds": quiet,
                                      "profile": "incucyte"}]}, env={})


def backlog(tmp: Path, model: Path, n: int, shape: tuple[int, int], *, engine: str = "auto",
            name: str = "backlog") -> dict:
    watch = tmp / name
    watch.mkdir()
    write_frames(watch, n, shape)
    runner = build_runner(settings(tmp, watch, 0.0, f"{name}.db", engine), model=model)
    t0 = time.perf_counter()
    runner.setup()  # database, folders, model and engine load: a daemon start, timed apart from the backlog
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    runner.run(once=True)
    wall = time.perf_counter() - t0
    t = runner.timings
    stages = {"decode": t.decode, "preprocess": t.preprocess, "inference": t.inference, "store": t.store}
    total = sum(stages.values())
    lat = latencies(tmp / f"{name}.db")
    return {"frames": n, "wall_s": wall, "setup_s": setup_s, "files_per_s": n / wall, "engine": runner.model.engine.name,
            "share": {k: v / total for k, v in stages.items()}, "stage_s": stages,
            "latency_median_s": statistics.median(lat), "latency_p95_s": float(np.percentile(lat, 95))}


def live(tmp: Path, model: Path, n: int, shape: tuple[int, int], rate: float, quiet: float, *,
         engine: str = "auto") -> dict:
    watch = tmp / f"live{quiet}"
    watch.mkdir()
    stage = tmp / f"stage{quiet}"
    stage.mkdir()
    files = write_frames(stage, n, shape, seed=1, start=1000)
    runner = build_runner(settings(tmp, watch, quiet, f"live{quiet}.db", engine), model=model, poll_interval=0.1)
    runner.setup()
    th = threading.Thread(target=runner.run, daemon=True)
    th.start()
    for p in files:
        os.replace(p, watch / p.name)  # appears complete at once, as an instrument's rename does
        os.utime(watch / p.name)
        time.sleep(1.0 / rate)
    end = time.monotonic() + 120
    while runner.timings.images < n and time.monotonic() < end:
        time.sleep(0.1)
    runner.stop_event.set()
    th.join(30)
    lat = latencies(tmp / f"live{quiet}.db")
    if not lat:
        return {"frames": n, "rate_per_s": rate, "quiet_s": quiet, "scored": 0,
                "latency_median_s": float("nan"), "latency_p95_s": float("nan")}
    return {"frames": n, "rate_per_s": rate, "quiet_s": quiet, "scored": len(lat), "engine": runner.model.engine.name,
            "latency_median_s": statistics.median(lat), "latency_p95_s": float(np.percentile(lat, 95))}


RESNET50_GFLOP_224 = 8.2  # per 224 x 224 image (2 x 4.1 GMAC)


def int8_peak_gops(args: argparse.Namespace) -> tuple[float | None, str]:
    """This machine's int8 bound (GOP/s) from the command line or the CPU peak tool's output."""
    if args.int8_peak_gops:
        return float(args.int8_peak_gops), "--int8-peak-gops"
    if not args.cpu_peak:
        return None, "not given (pass --int8-peak-gops or --cpu-peak FILE)"
    text = Path(args.cpu_peak).read_text()
    try:
        data = json.loads(text)
        return float(data["int8_gops"]), args.cpu_peak
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        pass
    m = re.search(r"int8 \S+: ([0-9.]+) GOP/s", text)
    if not m:
        raise SystemExit(f"{args.cpu_peak}: no int8 line ('int8 ...: N GOP/s') and no JSON int8_gops")
    return float(m.group(1)), args.cpu_peak


def train_model(work: Path, args: argparse.Namespace) -> Path:
    """A short run of the project's own training (same tile export, tile size and pixel size as
    docs/training.md's ResNet50), in a subprocess so torch never enters the measured process."""
    from nscmonitor.simulate.labelled_tiles import export_tiles

    data = work / "sim"
    print(f"rendering a small tiles export for a short {args.arch} run ...", flush=True)
    export_tiles(data, plates=3, hours=(24, 48, 72, 96), tile_size=224, wells_per_condition=args.train_wells,
                 fields=1, grid=(2, 2), seed=7)
    run = work / "run"
    cmd = [sys.executable, "-m", "nscmonitor", "train", "--data", str(data), "--scheme", "multiclass", "--out", str(run),
           "--arch", args.arch, "--image-size", str(args.image_size), "--epochs", str(args.train_epochs),
           "--batch-size", "32", "--label-mode", "well", "--device", args.train_device,
           "--no-engine"]  # the engine is built (and timed) below
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    print("training:", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)
    return run / "model.onnx"


def autobuild(model: Path, threads: int) -> dict:
    """What register/train do on their own: build, gate and record the best engine here."""
    cmd = [sys.executable, "-m", "nscmonitor", "engine", "autobuild", str(model), "--force"]
    if threads:
        cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd)
    seconds = time.perf_counter() - t0
    status_file = model.parent / "engine-status.json"
    status = json.loads(status_file.read_text()) if status_file.is_file() else {}
    return {"seconds": seconds, "exit": proc.returncode, "state": status.get("state"), "engine": status.get("engine"),
            "gate": status.get("gate"), "reason": status.get("reason"), "attempts": status.get("attempts"),
            "speeds": {k: status[k] for k in ("openvino_speed", "ort_speed", "openvino_bf16_speed") if status.get(k)}}


def engine_alone(model: Path, frames: list[Path], backend: str, batch_size: int, threads: int,
                 cache_dir: Path) -> dict:
    """The engine on exactly the tiles the pipeline makes of these frames, nothing else."""
    from nscmonitor.engines.metadata import read_onnx_metadata
    from nscmonitor.engines.select import select
    from nscmonitor.scoring.preprocess import Preprocess

    meta = read_onnx_metadata(model)
    pre = Preprocess.from_metadata(meta)
    t0 = time.perf_counter()
    tiles = [pre.tiles(tifffile.imread(p), factor=pre.factor(None)).tiles for p in frames]
    prep_s = time.perf_counter() - t0
    x = np.concatenate(tiles)
    sel = select(model, backend, batch_size=batch_size, threads=threads, cache_dir=cache_dir)
    engine = sel.engine
    batch_size = max(batch_size, engine.preferred_batch or 0)  # as the daemon chunks for it
    precision = getattr(engine, "precision", None)
    timed = {"served": engine}
    if precision not in (None, "f32"):
        # the same file with its other layers (or, for openvino-bf16, all of them) in f32, timed
        # in alternation with the served variant: what its bf16 buys, measured side by side
        from nscmonitor.engines.openvino import OpenVinoEngine

        from nscmonitor.engines.base import EngineError

        f32 = OpenVinoEngine(engine.model_path, engine.metadata, threads=threads, require_gate=False,
                             batch_size=engine.request_batch * engine.streams, streams=engine.streams,
                             large_batch=engine.large_batch, large_streams=engine.large_streams)
        try:
            f32.load()
            timed["f32"] = f32
        except EngineError as exc:  # the served row still counts
            print(f"the f32 rest of the same file not timed: {exc}", flush=True)
    seconds = _timed_alternating(timed, x, batch_size)
    infer_s = seconds["served"]
    ceiling = all_int8_ceiling(model, engine, x, batch_size, threads)
    return {"engine": engine.name, "precision": precision, "frames": len(frames), "tiles": len(x),
            "tiles_per_frame": len(x) / len(frames), "tile_px": meta.input_size, "arch": meta.arch, "batch": batch_size,
            "seconds": infer_s, "tiles_per_s": len(x) / infer_s, "frames_per_s": len(frames) / infer_s,
            "f32_rest_tiles_per_s": len(x) / seconds["f32"] if "f32" in seconds else None,
            "preprocess_frames_per_s": len(frames) / prep_s, "all_int8": ceiling}


def _timed_inference(engine, x: np.ndarray, batch_size: int) -> float:
    return _timed_alternating({"engine": engine}, x, batch_size)["engine"]


def _timed_alternating(engines: dict, x: np.ndarray, batch_size: int, passes: int = 3) -> dict[str, float]:
    """Seconds for ``x`` in chunks of ``batch_size`` per loaded engine: the median of
    ``passes`` passes after one warm-up chunk each, the engines taking turns pass by pass (a
    single pass of a few seconds moved by 5 % with what else the host ran); closes them."""
    import statistics

    try:
        for engine in engines.values():
            engine.infer(x[:batch_size])
        times: dict[str, list[float]] = {k: [] for k in engines}
        for _ in range(passes):
            for key, engine in engines.items():
                t0 = time.perf_counter()
                for i in range(0, len(x), batch_size):
                    engine.infer(x[i:i + batch_size])
                times[key].append(time.perf_counter() - t0)
        return {k: statistics.median(v) for k, v in times.items()}
    finally:
        for engine in engines.values():
            engine.close()


def all_int8_ceiling(model: Path, served, x: np.ndarray, batch_size: int, threads: int) -> dict | None:
    """What the layers the build kept fp32 cost, inside the engine: the model quantised with
    every layer int8 (the plain file, which its gate refused), timed like the engine alone on
    the same tiles, runtime and precision. None when the served engine is not a CPU int8 file
    or kept nothing fp32. The plain file is quantised again here (the build deletes what its
    gate refuses), into a temporary folder so the model's own folder is left as it was: a minute
    or more for a ResNet50."""
    import tempfile

    from nscmonitor.engines.base import EngineError
    from nscmonitor.engines.calibration import load_model_tiles
    from nscmonitor.engines.metadata import read_onnx_metadata
    from nscmonitor.engines.mixed_precision import serving_recipe
    from nscmonitor.engines.openvino import OpenVinoEngine
    from nscmonitor.engines.ort import INT8_KEY, OrtCpuEngine, int8_path_for
    from nscmonitor.engines.quantize import quantize_static_qdq

    if served.name not in ("openvino-int8", "ort-int8"):
        return None
    record = read_onnx_metadata(int8_path_for(model)).extra.get(INT8_KEY) or {}
    kept = (record.get("settings") or {}).get("exclude_nodes") or []
    if not kept:
        return None
    meta = read_onnx_metadata(model)
    openvino = served.name == "openvino-int8"
    groups = ((record.get("settings") or {}).get("mixed_precision") or {}).get("kept_fp32_groups")
    print("quantising the whole model in int8 to time what the layers kept fp32 cost ...", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="nscm-all-int8-") as tmp:
            plain = Path(tmp) / "all-int8.onnx"
            quantize_static_qdq(model, plain, load_model_tiles(model, meta).calib.x,
                                settings=serving_recipe(openvino), threads=threads)
            engine = (OpenVinoEngine(plain, meta, threads=threads, require_gate=False,
                                     batch_size=served.request_batch * served.streams, streams=served.streams,
                                     precision=served.precision, large_batch=served.large_batch,
                                     large_streams=served.large_streams) if openvino
                      else OrtCpuEngine(plain, meta, threads=threads))
            engine.load()
            seconds = _timed_inference(engine, x, batch_size)
    except (EngineError, RuntimeError, OSError) as exc:  # the rest of the run's figures still stand
        print(f"  the all-int8 timing failed: {exc}", flush=True)
        return {"error": str(exc), "nodes_kept_fp32": len(kept), "groups_kept_fp32": groups}
    return {"tiles_per_s": len(x) / seconds, "nodes_kept_fp32": len(kept), "groups_kept_fp32": groups}


def backend_of(engine_name: str) -> str:
    from nscmonitor.engines.base import EngineError
    from nscmonitor.engines.select import backend_of as of

    try:
        return of(engine_name)
    except EngineError as exc:
        raise SystemExit(str(exc)) from exc


def side_by_side(args: argparse.Namespace, shape: tuple[int, int]) -> int:
    peak, peak_source = int8_peak_gops(args)
    with tempfile.TemporaryDirectory(prefix="nscm-ingest-") as d:
        tmp = Path(d)
        source = Path(args.model) if args.model else train_model(tmp / "train", args)
        model = private_copy(source, tmp / "model")
        print(f"backlog with the fp32 ONNX ({args.frames} frames) ...", flush=True)
        fp32 = backlog(tmp, model, args.frames, shape, engine="ort-cpu", name="backlog-fp32")
        print("building this machine's engine (nscmonitor engine autobuild) ...", flush=True)
        build = autobuild(model, args.threads)
        print(f"backlog with the built engine ({args.frames} frames) ...", flush=True)
        built = backlog(tmp, model, args.frames, shape, engine="auto", name="backlog-engine")
        frames = sorted((tmp / "backlog-engine").glob("*.tif"))[:args.engine_alone_frames]
        backend = backend_of(built["engine"])
        alone = engine_alone(model, frames, backend, parse_settings({}, env={}).batch_size, args.threads,
                             tmp / "models" / "engines")
        print(f"live: {args.live_frames} frames at 1 per {1 / args.live_rate:g} s, quiet period {args.quiet:g} s ...",
              flush=True)
        live_run = live(tmp, model, args.live_frames, shape, args.live_rate, args.quiet, engine="auto")
    gflop = RESNET50_GFLOP_224 * (alone["tile_px"] / 224) ** 2 if alone["arch"] == "resnet50" else None
    achieved = alone["tiles_per_s"] * gflop if gflop else None
    bound = {"int8_peak_gops": peak, "source": peak_source, "gflop_per_tile": gflop,
             "engine_gops": achieved, "share": achieved / peak if achieved and peak else None}
    result = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
        "model": str(args.model) if args.model else f"{args.arch} trained here for {args.train_epochs} epochs",
        "frame": f"{shape[1]}x{shape[0]} uint16", "build": build, "backlog_fp32": fp32, "backlog_engine": built,
        "engine_alone": alone, "int8_bound": bound, "live": live_run,
        "goals": {
            "engine_vs_fp32": built["files_per_s"] / fp32["files_per_s"],
            "engine_frames_per_s": built["files_per_s"],
            "pipeline_share_of_engine_alone": built["files_per_s"] / alone["frames_per_s"],
            "engine_share_of_int8_bound": bound["share"],
            "live_p95_s": live_run["latency_p95_s"], "live_p95_limit_s": args.quiet + 2.0,
        },
    }
    out = Path(args.out if args.out_given else Path(args.out).with_name("ingest-side-by-side.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print_side_by_side(result)
    print(f"wrote {out}")
    return 0


def private_copy(source: Path, folder: Path) -> Path:
    """The model with what travels with it (calibration set, checkpoint), without any engine
    built beside the original: the engine, its status and its int8 model are written here."""
    folder.mkdir()
    for f in source.parent.iterdir():
        if f.is_file() and (f.name in (source.name, "best.pt") or f.name.startswith("calibration")):
            shutil.copy2(f, folder / ("model.onnx" if f == source else f.name))
    return folder / "model.onnx"


def engines_over_time(db: Path, t0: float) -> list[tuple[float, str]]:
    """(seconds after ``t0`` the image was stored, engine that scored it), in storing order."""
    with sqlite3.connect(db) as c:
        rows = c.execute("select i.scored_at, p.engine from images i join predictions p on p.image_id = i.id "
                         "where i.status = 'done' order by i.scored_at").fetchall()
    return [(stored_epoch(scored) - t0, engine) for scored, engine in rows]


def during_build(args: argparse.Namespace, shape: tuple[int, int]) -> int:
    """A daemon started on a backlog with a model that has no engine on this machine, as after
    ``models register`` on a busy instrument PC: it starts the build in the background itself
    and scores meanwhile. Which engine scored each frame and when, and the build's records."""
    if not args.model:
        raise SystemExit("--during-build needs --model (a trained model with its calibration set)")
    with tempfile.TemporaryDirectory(prefix="nscm-ingest-") as d:
        tmp = Path(d)
        model = private_copy(Path(args.model), tmp / "model")
        watch = tmp / "backlog"
        watch.mkdir()
        write_frames(watch, args.frames, shape)
        runner = build_runner(settings(tmp, watch, 0.0, "during.db", "auto", args.threads), model=model)
        t0 = time.time()
        print(f"daemon on a backlog of {args.frames} frames; its engine build starts in the background ...", flush=True)
        runner.setup()
        runner.run(once=True)
        wall = time.time() - t0
        status_file = model.parent / "engine-status.json"
        status = json.loads(status_file.read_text()) if status_file.is_file() else {}
        scored = engines_over_time(tmp / "during.db", t0)
    by_engine: dict[str, dict] = {}
    for t, engine in scored:
        e = by_engine.setdefault(engine, {"frames": 0, "first_s": t, "last_s": t})
        e["frames"] += 1
        e["last_s"] = t
    for e in by_engine.values():
        span = e["last_s"] - e["first_s"]
        e["frames_per_s"] = (e["frames"] - 1) / span if span > 0 and e["frames"] > 1 else None
    result = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
              "model": str(args.model), "frame": f"{shape[1]}x{shape[0]} uint16", "frames": args.frames,
              "wall_s": wall, "by_engine": by_engine,
              "build_record_at_end": {k: status.get(k) for k in ("state", "engine", "pending", "build_seconds",
                                                                  "started_at", "finished_at")}}
    out = Path(args.out if args.out_given else Path(args.out).with_name("ingest-during-build.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"model: {args.model}; {args.frames} frames of {result['frame']}, backlog emptied in {wall:.0f} s")
    print(f"{'engine':<16}{'frames':>8}{'first s':>9}{'last s':>9}{'frames/s':>10}")
    for name, e in by_engine.items():
        rate = f"{e['frames_per_s']:.2f}" if e["frames_per_s"] else "-"
        print(f"{name:<16}{e['frames']:>8}{e['first_s']:>9.0f}{e['last_s']:>9.0f}{rate:>10}")
    rec = result["build_record_at_end"]
    print(f"build record at the end: {rec['state']} {rec['engine']}, pending {rec['pending'] or 'nothing'}, "
          f"{rec['build_seconds']} s")
    print(f"wrote {out}")
    return 0


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def _goal(text: str, value: float | None, ok) -> str:
    """One goal with its verdict spelled out, so a figure rounded onto its limit is not read as met."""
    return f"{text}: n/a" if value is None else f"{text}: {'met' if ok(value) else 'NOT met'}"


def print_side_by_side(r: dict) -> None:
    from nscmonitor.engines.validate import readout_text

    a, b, e, g, live_run = r["backlog_fp32"], r["backlog_engine"], r["engine_alone"], r["goals"], r["live"]
    build = r["build"]
    print(f"model: {r['model']}; {e['tiles_per_frame']:.0f} tiles of {e['tile_px']} px per {r['frame']} frame")
    verdict = build["state"] or "no status"
    gate = build.get("gate") or {}
    print(f"engine build: {build['seconds']:.0f} s -> {verdict} {build.get('engine') or ''}"
          + (f" (gate: top-1 {gate.get('top1_agreement', float('nan')):.2%}, {readout_text(gate)})" if gate else "")
          + (f"; {build['reason']}" if build.get("reason") else ""))
    for field, s in (build.get("speeds") or {}).items():  # auto mode serves the fastest that is not slower
        kind = "int8" if "int8_tiles_per_s" in s else "bf16"
        print(f"  timed by the build ({field.removesuffix('_speed')}): {kind} {s[f'{kind}_tiles_per_s']:.0f} vs fp32 "
              f"{s['fp32_tiles_per_s']:.0f} tiles/s ({s[f'{kind}_tiles_per_s'] / s['fp32_tiles_per_s']:.2f}x)")
    print(f"{'run':<28}{'engine':<16}{'frames/s':>10}{'decode':>9}{'prep':>8}{'infer':>8}{'store':>8}")
    for name, x in (("backlog, fp32 ONNX", a), ("backlog, built engine", b)):
        sh = x["share"]
        print(f"{name:<28}{x['engine']:<16}{x['files_per_s']:>10.2f}{sh['decode']:>9.0%}{sh['preprocess']:>8.0%}"
              f"{sh['inference']:>8.0%}{sh['store']:>8.0%}")
    print(f"{'engine alone, same tiles':<28}{e['engine']:<16}{e['frames_per_s']:>10.2f}"
          f"   ({e['tiles_per_s']:.0f} tiles/s, batch {e['batch']}; preprocessing alone {e['preprocess_frames_per_s']:.1f} frames/s)")
    if e.get("f32_rest_tiles_per_s"):
        f32 = e["f32_rest_tiles_per_s"]
        label = "same model, OpenVINO f32" if e["engine"] == "openvino-bf16" else "engine alone, f32 rest"
        print(f"{label:<28}{'(same file)':<16}{f32 / e['tiles_per_frame']:>10.2f}   ({f32:.0f} tiles/s "
              f"in alternation with the row above: its {e['precision']} {e['tiles_per_s'] / f32:.2f}x this)")
    ceiling = e.get("all_int8")
    if ceiling and ceiling.get("error"):
        print(f"{'engine, all of it int8':<28}{'(not timed)':<16}   {ceiling['error']}")
    elif ceiling:
        groups = ceiling.get("groups_kept_fp32") or []
        print(f"{'engine, all of it int8':<28}{'(gate refused)':<16}{ceiling['tiles_per_s'] / e['tiles_per_frame']:>10.2f}"
              f"   ({ceiling['tiles_per_s']:.0f} tiles/s: the {len(groups) or ceiling['nodes_kept_fp32']} "
              f"{'group(s)' if groups else 'node(s)'} kept fp32 cost {1 - e['tiles_per_s'] / ceiling['tiles_per_s']:.0%}"
              f" of it{': ' + ', '.join(groups) if groups else ''})")
    bd = r["int8_bound"]
    print(f"int8 bound: {bd['source']}" + (f", {bd['int8_peak_gops']:.0f} GOP/s; engine {bd['engine_gops']:.0f} GOP/s"
                                          if bd["engine_gops"] and bd["int8_peak_gops"] else ""))
    print(f"live at {live_run['rate_per_s']:g} frames/s, quiet {live_run['quiet_s']:g} s: "
          f"{live_run['scored']}/{live_run['frames']} scored, "
          f"latency median {live_run['latency_median_s']:.2f} s, p95 {live_run['latency_p95_s']:.2f} s")
    print("goals: " + "; ".join([
        _goal(f"engine/fp32 {g['engine_vs_fp32']:.2f}x (>= 3x)", g["engine_vs_fp32"], lambda v: v >= 3),
        _goal(f"engine {g['engine_frames_per_s']:.2f} frames/s (>= 3)", g["engine_frames_per_s"], lambda v: v >= 3),
        _goal(f"pipeline keeps {_pct(g['pipeline_share_of_engine_alone'])} of the engine alone (>= 70%)",
              g["pipeline_share_of_engine_alone"], lambda v: v >= 0.7),
        _goal(f"engine at {_pct(g['engine_share_of_int8_bound'])} of the int8 bound (>= 80%)",
              g["engine_share_of_int8_bound"], lambda v: v >= 0.8),
        _goal(f"live p95 {g['live_p95_s']:.2f} s (<= {g['live_p95_limit_s']:g} s)", g["live_p95_s"],
              lambda v: v <= g["live_p95_limit_s"])]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--live-frames", type=int, default=40)
    ap.add_argument("--shape", default="1040x1408", help="HxW")
    ap.add_argument("--model", help="ONNX model (default: a tiny 64 px classifier, i.e. pipeline overhead; "
                                    "with --side-by-side: a ResNet50 trained here)")
    ap.add_argument("--out", help="JSON result (default benchmarks/results/ingest.json, "
                                  "ingest-side-by-side.json with --side-by-side)")
    sbs = ap.add_argument_group("side-by-side mode")
    sbs.add_argument("--side-by-side", action="store_true",
                     help="fp32 ONNX vs the automatically built engine, engine alone, int8 bound, live p95")
    sbs.add_argument("--arch", default="resnet50", help="architecture of the model trained here")
    sbs.add_argument("--image-size", type=int, default=96, help="tile size of the model trained here")
    sbs.add_argument("--train-epochs", type=int, default=6)
    sbs.add_argument("--train-device", default="auto", help="device of that training run (auto: the GPU when torch "
                                                            "sees one)")
    sbs.add_argument("--train-wells", type=int, default=4, help="wells per condition in the training export")
    sbs.add_argument("--threads", type=int, default=0, help="threads for training, the build and the engine (0: all)")
    sbs.add_argument("--int8-peak-gops", type=float, help="this machine's int8 peak, GOP/s")
    sbs.add_argument("--cpu-peak", metavar="FILE", help="output of ../shared/tools/cpu_peak.sh, or of "
                     "benchmarks/amx_peak.sh on a CPU with AMX, of benchmarks/avx2_peak.sh on one "
                     "without AVX-512 (or JSON int8_gops)")
    sbs.add_argument("--engine-alone-frames", type=int, default=20)
    sbs.add_argument("--live-rate", type=float, default=0.5, help="live arrival rate, frames/s")
    sbs.add_argument("--quiet", type=float, default=1.0, help="quiet period of the live watch, s")
    dur = ap.add_argument_group("during-build mode")
    dur.add_argument("--during-build", action="store_true",
                     help="a daemon on a backlog of --frames with --model and no engine here: which engine scored "
                          "each frame while the daemon's own build ran (--threads applies)")
    args = ap.parse_args()
    args.out_given = args.out is not None
    args.out = args.out or str(Path(__file__).parent / "results" / "ingest.json")
    shape = tuple(int(v) for v in args.shape.split("x"))
    if args.side_by_side:
        return side_by_side(args, shape)
    if args.during_build:
        return during_build(args, shape)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = Path(args.model) if args.model else tmp / "tiny.onnx"
        if not args.model:
            build_tiny_classifier(model, input_size=64)
        b = backlog(tmp, model, args.frames, shape)
        rate = max(0.5, 0.6 * b["files_per_s"])
        lives = [live(tmp, model, args.live_frames, shape, rate, q) for q in (0.0, 1.0)]
    result = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
              "model": args.model or "tiny 64 px (pipeline overhead only)", "frame": f"{shape[1]}x{shape[0]} uint16",
              "backlog": b, "live": lives}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"model: {result['model']}; engine {b['engine']}; frames {result['frame']}")
    print(f"{'phase':<22}{'frames':>7}{'files/s':>10}{'lat med s':>11}{'lat p95 s':>11}")
    print(f"{'backlog':<22}{b['frames']:>7}{b['files_per_s']:>10.2f}{b['latency_median_s']:>11.2f}{b['latency_p95_s']:>11.2f}")
    for live_run in lives:
        label = f"live q={live_run['quiet_s']} @{live_run['rate_per_s']:.1f}/s"
        print(f"{label:<22}{live_run['scored']:>7}"
              f"{'':>10}{live_run['latency_median_s']:>11.2f}{live_run['latency_p95_s']:>11.2f}")
    print("backlog time share: " + ", ".join(f"{k} {v:.0%}" for k, v in b["share"].items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
