"""Dashboard at scale: a 384-well plate, 9 fields x 120 time points (~415,000 predictions).

    python benchmarks/dashboard.py                 # build the store in a temp folder, measure
    python benchmarks/dashboard.py --db store.db   # reuse (or create) this store

The store is filled with plain SQL inserts into the real schema (Alembic head), shaped like
the daemon's rows: images, predictions (with a tile blob), well readouts per well and time,
a plate map with 16 conditions. Then the real window opens it offscreen and we time:
the plate load query, first paint (window created -> plate map painted with data), a
time-slider step (array index + synchronous repaint of the 384 wells), an idle live poll and
a live poll that picks up one new scan of 384 wells. Results: a table on stdout and
benchmarks/results/dashboard.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

CLASSES = ["neuron", "astrocyte", "oligodendrocyte", "undifferentiated"]
ROWS, COLS = 16, 24


def _ts(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S.%f")


def build(db: Path, *, fields: int, times: int, interval_h: float = 1.0, seed: int = 0) -> dict:
    from nscmonitor.core.domain import well_name
    from nscmonitor.core.aggregate import pack_tiles
    from nscmonitor.store.db import ensure_schema, open_engine

    t0 = time.perf_counter()
    ensure_schema(open_engine(f"sqlite:///{db}"))
    rng = np.random.default_rng(seed)
    start = datetime(2025, 3, 1, tzinfo=timezone.utc)
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    now = _ts(datetime.now(timezone.utc))
    con.execute("INSERT INTO experiments (id, name, watch_path, created_at) VALUES (1, 'BENCH-384', '/data/bench', ?)",
                (now,))
    con.execute("INSERT INTO plates (id, experiment_id, name, plate_format) VALUES (1, 1, 'P1', 384)")
    wells = []
    for r in range(ROWS):
        for c in range(COLS):
            cond = f"condition {(c // 3) + 8 * (r // 8) + 1:02d}"
            wells.append((len(wells) + 1, 1, well_name(r, c), r, c, cond))
    con.executemany("INSERT INTO wells (id, plate_id, name, row, col, condition) VALUES (?, ?, ?, ?, ?, ?)", wells)
    # each well drifts towards a fate: neuron share rises for some conditions, glia for others
    target = rng.dirichlet(np.ones(4) * 2, size=len(wells))
    blob = pack_tiles(rng.dirichlet(np.ones(4), size=60).astype(np.float32), 8, 8, np.arange(64) < 60)
    images, preds, readouts = [], [], []
    iid = 0
    for t in range(times):
        h = t * interval_h
        when = start + timedelta(hours=h)
        mix = min(1.0, h / (times * interval_h * 0.6))
        for w in wells:
            p_well = (1 - mix) * np.full(4, 0.25) + mix * target[w[0] - 1]
            field_p = rng.dirichlet(p_well * 200, size=fields)
            for f in range(fields):
                iid += 1
                path = f"/data/bench/P1_{w[2]}_{f + 1}_{t:03d}.tif"
                images.append((iid, 1, path, path[12:], 4_000_000, 0.0, "done", 0, 0.0, 0, w[0], f + 1, t + 1, t + 1, h,
                               _ts(when), '{"focus": 0.01, "saturation": 0.0, "blank": false}', 1, 2048, 2048,
                               _ts(when), _ts(when), _ts(when)))
                p = field_p[f]
                preds.append((iid, iid, "bench-v1", json.dumps(CLASSES), json.dumps(p.tolist()),
                              json.dumps((p * 0.1).tolist()), json.dumps(p.tolist()), 60, float(p.max()), blob,
                              "ort-int8", _ts(when)))
            m, sd = field_p.mean(axis=0), field_p.std(axis=0, ddof=1)
            readouts.append((w[0], 1, t + 1, t + 1, "bench-v1", h, _ts(when), json.dumps(CLASSES),
                             json.dumps(m.tolist()), json.dumps(sd.tolist()), json.dumps(m.tolist()), fields,
                             60 * fields, 0, float(field_p.max(axis=1).mean()), _ts(when)))
        if len(images) > 50_000 or t == times - 1:
            con.executemany(
                "INSERT INTO images (id, experiment_id, path, relpath, size, mtime, status, attempts, next_attempt_at,"
                " rewritten, well_id, field, timepoint, time_key, elapsed_h, acquired_at, qc, qc_passed, width, height,"
                " discovered_at, updated_at, scored_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                " ?, ?, ?, ?)", images)
            con.executemany(
                "INSERT INTO predictions (id, image_id, model_version, classes, prob_mean, prob_sd, fraction, n_tiles,"
                " confidence, tiles, engine, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", preds)
            con.executemany(
                "INSERT INTO well_readouts (well_id, plate_id, time_key, timepoint, model_version, elapsed_h,"
                " acquired_at, classes, prob_mean, prob_sd, fraction, n_images, n_tiles, n_qc_failed, confidence,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", readouts)
            images, preds, readouts = [], [], []
    con.commit()
    con.close()
    return {"images": iid, "wells": len(wells), "times": times, "fields": fields,
            "build_s": round(time.perf_counter() - t0, 1)}


def add_scan(db: Path, t: int, fields: int) -> None:
    """One more scan (384 wells x fields) as the daemon would commit it, for the live poll."""
    con = sqlite3.connect(db)
    iid = con.execute("SELECT MAX(id) FROM images").fetchone()[0]
    when = _ts(datetime.now(timezone.utc))
    p = [0.4, 0.3, 0.2, 0.1]
    for wid in range(1, ROWS * COLS + 1):
        for f in range(fields):
            iid += 1
            con.execute("INSERT INTO images (id, experiment_id, path, relpath, size, mtime, status, attempts,"
                        " next_attempt_at, rewritten, well_id, field, timepoint, time_key, elapsed_h, qc_passed,"
                        " discovered_at, updated_at) VALUES (?, 1, ?, ?, 1, 0, 'done', 0, 0, 0, ?, ?, ?, ?, ?, 1, ?, ?)",
                        (iid, f"/data/bench/new_{iid}.tif", f"new_{iid}.tif", wid, f + 1, t, t, float(t - 1), when,
                         when))
            con.execute("INSERT INTO predictions (image_id, model_version, classes, prob_mean, prob_sd, fraction,"
                        " n_tiles, confidence, created_at) VALUES (?, 'bench-v1', ?, ?, ?, ?, 60, 0.4, ?)",
                        (iid, json.dumps(CLASSES), json.dumps(p), json.dumps(p), json.dumps(p), when))
        con.execute("INSERT INTO well_readouts (well_id, plate_id, time_key, timepoint, model_version, elapsed_h,"
                    " classes, prob_mean, prob_sd, fraction, n_images, n_tiles, n_qc_failed, confidence, updated_at)"
                    " VALUES (?, 1, ?, ?, 'bench-v1', ?, ?, ?, ?, ?, ?, 540, 0, 0.4, ?)",
                    (wid, t, t, float(t - 1), json.dumps(CLASSES), json.dumps(p), json.dumps(p), json.dumps(p), fields,
                     when))
    con.commit()
    con.close()


def measure(db: Path, times: int, fields: int) -> dict:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QCoreApplication, QEventLoop

    from nscmonitor.config import parse_settings
    from nscmonitor.gui.app import open_store, qt_app
    from nscmonitor.gui.main_window import MainWindow
    from nscmonitor.gui.state.presenter import load_plate, poll
    from nscmonitor.store import plate_reads as dash
    from nscmonitor.store import reads

    app = qt_app()
    url = f"sqlite:///{db}"
    engine = open_store(url)
    settings = parse_settings({"database_url": url})
    out: dict = {}

    t0 = time.perf_counter()
    ov = reads.overview(engine)
    out["overview_query_s"] = time.perf_counter() - t0
    plate = ov[0].plates[0]
    loads = []
    for _ in range(3):
        t0 = time.perf_counter()
        pl = load_plate(engine, plate, None)
        loads.append(time.perf_counter() - t0)
    out["plate_load_s"] = min(loads)
    assert pl.cube.n_times == times and len(pl.cube.wells) == ROWS * COLS

    def pump_until(cond, limit: float = 60.0) -> None:
        end = time.monotonic() + limit
        while not cond():
            if time.monotonic() > end:
                raise TimeoutError("the dashboard did not load")
            QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 5)

    t0 = time.perf_counter()
    win = MainWindow(engine, settings, poll_s=3600)
    win.resize(1600, 1000)
    win.show()
    pump_until(lambda: win.cube is not None)
    win.plate_map.repaint()
    out["first_paint_s"] = time.perf_counter() - t0
    pump_until(lambda: win.load is not None and not win.load.partial)
    out["all_time_points_ready_s"] = time.perf_counter() - t0
    win.plate_map.set_selection(["C05"])
    pump_until(lambda: win.reader.busy == 0)
    steps = []
    for t in range(times):
        s0 = time.perf_counter()
        win.slider.setValue(t)
        win.plate_map.repaint()
        steps.append(time.perf_counter() - s0)
    pump_until(lambda: win.reader.busy == 0)
    out["slider_step_ms_median"] = statistics.median(steps) * 1000
    out["slider_step_ms_p95"] = float(np.percentile(steps, 95) * 1000)
    out["slider_step_ms_max"] = max(steps) * 1000
    marks = dash.marks(engine)
    t0 = time.perf_counter()
    poll(engine, plate, pl.version, marks, None)
    out["idle_poll_s"] = time.perf_counter() - t0
    add_scan(db, times + 1, fields)
    t0 = time.perf_counter()
    r = poll(engine, plate, pl.version, marks, None)
    out["live_poll_one_scan_s"] = time.perf_counter() - t0
    assert r.rows is not None and len(r.rows) == ROWS * COLS
    t0 = time.perf_counter()
    win.marks = marks
    win._polled(r)
    win.plate_map.repaint()
    out["live_merge_and_paint_s"] = time.perf_counter() - t0
    assert win.cube.n_times == times + 1
    win.close()
    del app
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", help="SQLite file to build (if absent) and open")
    ap.add_argument("--fields", type=int, default=9)
    ap.add_argument("--times", type=int, default=120)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "dashboard.json"))
    args = ap.parse_args(argv)
    tmp = None
    if args.db:
        db = Path(args.db)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="nscmonitor-bench-")
        db = Path(tmp.name) / "bench.db"
    info = {"reused": True}
    if not db.exists():
        print(f"building {db} ({ROWS * COLS} wells x {args.fields} fields x {args.times} time points) …", flush=True)
        info = build(db, fields=args.fields, times=args.times)
    res = measure(db, args.times, args.fields)
    targets = {"first_paint_s": 1.5, "slider_step_ms_p95": 100.0}
    rows = [(k, v, targets.get(k)) for k, v in res.items()]
    print(f"\n{'measure':<26} {'value':>10}  target")
    for k, v, tgt in rows:
        print(f"{k:<26} {v:>10.3f}  {'' if tgt is None else ('<= %g ' % tgt) + ('ok' if v <= tgt else 'MISSED')}")
    result = {"store": info, "db_mb": round(db.stat().st_size / 2**20, 1), "results": res, "targets": targets,
              "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                          "cpus": os.cpu_count()},
              "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
