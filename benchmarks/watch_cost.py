"""What watching a folder that has gathered many images costs, and how soon a new file is seen.

An instrument's output folder grows all week: a 96-well plate with 4 fields and 2 channels read
every 2 h for a week is 64,512 files, and labs keep several plates' folders. On a share the
daemon polls: this measures, on a tree of ``--files`` empty files laid out as MetaXpress writes
them (plates, ``TimePoint_n`` folders), side by side in one run:

* ``watchdog polling observer``: watchdog's ``PollingObserver`` (what the daemon used on shares
  before 2026-12-05), which stats every file of the tree at every pass;
* ``listing poller``: ``intake.watcher.ListingPoller``, which stats each directory and lists
  only those whose mtime changed;
* ``full rescan``: one ``intake.watcher.scan`` plus one ``lstat`` per file (what the daemon does
  every ``rescan_interval`` on a local folder, the source of truth), and the real ``Intake``'s
  pass over a polled folder whose files are all known: the deep rescan (every file looked at,
  at start and hourly) and the rescans between (only the known files of directories whose mtime
  changed are looked at; here one directory gained a file).

For each poller: the CPU it used over ``--seconds`` as a share of one core (process CPU time
over wall time, nothing else running in the process), and the seconds from a new file's
creation to its path on the poller's queue (median of ``--probes`` files, one per 2 s interval
at most). Prints a table and writes JSON (``benchmarks/results/watch_cost.json``).

    python benchmarks/watch_cost.py --files 200000 --seconds 30
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import statistics
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def make_tree(root: Path, n: int) -> None:
    per_dir = 2000
    for d in range((n + per_dir - 1) // per_dir):
        folder = root / f"plate{d // 10}" / f"TimePoint_{d % 10 + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(min(per_dir, n - d * per_dir)):
            (folder / f"P_{chr(65 + i % 8)}{i % 12 + 1:02d}_s{i % 9 + 1}_w{i // 1000 + 1}_{i}.tif").touch()


def measure(name: str, start, stop, q: queue.Queue, root: Path, seconds: float, probes: int) -> dict:
    """CPU share over ``seconds`` of the poller started by ``start``, then the latency of new
    files reaching its queue."""
    start()
    time.sleep(2.5)  # past its first pass
    while not q.empty():
        q.get_nowait()
    c0, t0 = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    cpu = (time.process_time() - c0) / (time.perf_counter() - t0)
    latencies = []
    live = root / "plate0" / "TimePoint_1"
    for i in range(probes):
        path = live / f"{name.split()[0]}_probe_{i}.tif"
        t = time.perf_counter()
        path.touch()
        while True:
            try:
                got = q.get(timeout=10)
            except queue.Empty:
                latencies.append(float("inf"))
                break
            if os.path.abspath(got) == str(path):
                latencies.append(time.perf_counter() - t)
                break
    stop()
    return {"poller": name, "cpu_share_of_core": round(cpu, 4),
            "new_file_seen_after_s_median": round(statistics.median(latencies), 3),
            "new_file_seen_after_s_max": round(max(latencies), 3)}


def polled_rescans(root: Path, paths: list[str]) -> list[dict]:
    """The real intake's rescan of a polled folder whose files the database already knows:
    deep (every file looked at) and shallow (only changed directories' known files)."""
    from nscmonitor.config import WatchFolder
    from nscmonitor.intake.folder import WatchedFolder
    from nscmonitor.intake.intake import Intake
    from nscmonitor.intake.known import KnownFiles, look
    from nscmonitor.intake.watcher import DEEP_RESCAN_S

    now = [0.0]
    known = KnownFiles({p: (s.size, s.mtime) for p in paths if (s := look(p)) is not None})
    cfg = WatchFolder(path=root, experiment="bench", profile="imagexpress", quiet_seconds=0.0, polling=True,
                      rescan_interval=1.0)
    folder = WatchedFolder.open(cfg, 1, (), poll_interval=3600.0, clock=lambda: now[0])
    intake = Intake([folder], known)
    rows = []
    try:
        for what, step in (("deep", 0.0), ("shallow", 1.0), ("deep (hourly)", DEEP_RESCAN_S)):
            now[0] += step
            if what == "shallow":
                (root / "plate0" / "TimePoint_1" / "P_A01_s1_w1_new.tif").touch()
            c0, t0 = time.process_time(), time.perf_counter()
            found = [d for _, items in intake.discover() for d in items]
            while folder.watcher.scanning is not None:  # the rest of its slices
                found += [d for _, items in intake.discover() for d in items]
            rows.append({"poller": f"polled folder, {what} rescan", "files": len(paths), "found": len(found),
                         "seconds": round(time.perf_counter() - t0, 3), "cpu_s": round(time.process_time() - c0, 3)})
    finally:
        intake.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=200_000)
    ap.add_argument("--seconds", type=float, default=30.0, help="how long each poller's CPU is measured")
    ap.add_argument("--interval", type=float, default=2.0, help="the pollers' interval (the daemon's poll_interval)")
    ap.add_argument("--probes", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None, help="where to build the tree (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "watch_cost.json")
    args = ap.parse_args()

    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers.polling import PollingObserver

    from nscmonitor.intake.known import look
    from nscmonitor.intake.watcher import ListingPoller, scan

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp) / "tree"
        t = time.perf_counter()
        make_tree(root, args.files)
        print(f"tree of {args.files} files in {time.perf_counter() - t:.1f} s at {root}")

        rows = []
        c0, t0 = time.process_time(), time.perf_counter()
        paths = list(scan(root))
        for p in paths:
            look(p)
        rows.append({"poller": "full rescan (once)", "files": len(paths),
                     "seconds": round(time.perf_counter() - t0, 3), "cpu_s": round(time.process_time() - c0, 3)})
        rows += polled_rescans(root, paths)

        q_old: queue.Queue = queue.Queue()

        class Put(FileSystemEventHandler):
            def on_created(self, event: FileSystemEvent) -> None:
                q_old.put(os.fsdecode(event.src_path))

        obs = PollingObserver(timeout=args.interval)
        obs.schedule(Put(), str(root), recursive=True)
        obs.daemon = True

        def stop_old() -> None:
            obs.stop()
            obs.join()

        rows.append(measure("watchdog polling observer", obs.start, stop_old, q_old, root, args.seconds, args.probes))

        q_new: queue.Queue = queue.Queue()
        poller = ListingPoller(root, q_new, args.interval)

        def stop_new() -> None:
            poller.stop()
            poller.join()

        rows.append(measure("listing poller", poller.start, stop_new, q_new, root, args.seconds, args.probes))

    print(f"\n{'poller':<28} {'CPU (share of a core)':>22} {'new file seen after (median / max s)':>38}")
    for r in rows:
        if "cpu_share_of_core" in r:
            print(f"{r['poller']:<28} {100 * r['cpu_share_of_core']:>21.1f}% "
                  f"{r['new_file_seen_after_s_median']:>18.2f} / {r['new_file_seen_after_s_max']:.2f}")
        else:
            print(f"{r['poller']:<28} {r['files']} files in {r['seconds']:.2f} s ({r['cpu_s']:.2f} s CPU)")
    by = {r["poller"]: r for r in rows}
    old, new = by["watchdog polling observer"]["cpu_share_of_core"], by["listing poller"]["cpu_share_of_core"]
    if new > 0:
        print(f"\nlisting poller uses {old / new:.0f}x less CPU than watchdog's polling observer on this tree")
    from scale import cpu_name  # benchmarks/ is this script's folder

    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores")
    result = {"files": args.files, "seconds": args.seconds, "interval_s": args.interval,
              "cpu": cpu_name(), "python": platform.python_version(),
              "cores": os.cpu_count(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
