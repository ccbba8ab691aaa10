"""The core sub-commands: run, status, export, doctor, parse, db."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from datetime import datetime, timezone
from pathlib import Path

from nscmonitor.config import (ENGINES, MAX_QUIET_S, Settings, WatchFolder, check_database_url, load_settings,
                               with_overrides)
from nscmonitor.core.domain import PLATE_SHAPES
from nscmonitor.core.errors import UserFacingError

log = logging.getLogger(__name__)


def _number(kind: type, lo: float, hi: float, what: str):  # noqa: ANN202
    """argparse type for a bounded, finite number: 'nan', 'inf' and out-of-range values are
    refused with the allowed range instead of being accepted and silently misbehaving."""
    def parse(text: str):  # noqa: ANN202
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} ({lo:g}..{hi:g}), got {text!r}") from None
        if not (math.isfinite(v) and lo <= v <= hi):
            raise argparse.ArgumentTypeError(f"expected {what} ({lo:g}..{hi:g}), got {text!r}")
        return v

    return parse


def settings_from(args: argparse.Namespace) -> Settings:
    s = load_settings(getattr(args, "config", None))
    db = getattr(args, "db", None)
    return with_overrides(s, database_url=None if db is None else check_database_url(db))


# --- run ------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    s = settings_from(args)
    if args.watch:
        extra = tuple(WatchFolder(path=Path(d).resolve(), experiment=args.experiment or Path(d).resolve().name,
                                  profile=args.profile, plate_format=args.plate_format,
                                  plate_map=Path(args.plate_map) if args.plate_map else None,
                                  quiet_seconds=args.quiet if args.quiet is not None else 5.0,
                                  polling=True if args.polling else None, channel=args.channel)
                      for d in args.watch)
        s = with_overrides(s, watch=s.watch + extra)
    s = with_overrides(s, engine=args.engine, batch_size=args.batch_size)
    from nscmonitor.store.instance import acquire

    lock = acquire(s.database_url)  # one daemon per database: a second one refuses, naming the first
    try:
        return _serve(args, s)
    finally:
        lock.release()


def _serve(args: argparse.Namespace, s: Settings) -> int:
    from nscmonitor.daemon import build_runner, install_signal_handlers
    from nscmonitor.store.repo import Repo

    runner = build_runner(s, model=Path(args.model) if args.model else None)
    install_signal_handlers(runner.stop_event)
    runner.setup()
    m = runner.model
    print(f"nscmonitor: serving model {m.version} with {m.engine.name}; watching "
          + ", ".join(str(f.cfg.path) for f in runner.folders), file=sys.stderr)
    if m.version.startswith("tiny-untrained"):
        print("nscmonitor: WARNING: this is an untrained demo model; its predictions mean nothing.", file=sys.stderr)
    if runner.engine_builds is not None:
        print(f"nscmonitor: engine: {runner.engine_builds.summary(m.path, m.version)['message']}", file=sys.stderr)
    sched = None
    if not args.once and not args.no_schedule:
        from nscmonitor.schedule.scheduler import make_scheduler

        sched = make_scheduler(s, config_path=getattr(args, "config", None))
        sched.resume()
        job = sched.get_job("nscmonitor-retrain")
        print(f"nscmonitor: retrain schedule {s.retrain.schedule}; next run {job.next_run_time if job else 'none'}",
              file=sys.stderr)
    try:
        _run_loop(args, runner)
    finally:
        if sched is not None:
            sched.shutdown(wait=False)
    counts = Repo(runner.store.engine).queue_counts()
    print("nscmonitor: stopped; images by state: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
          file=sys.stderr)
    return 0


def _run_loop(args: argparse.Namespace, runner) -> None:  # noqa: ANN001
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if args.once and (sys.stderr.isatty() or args.progress):
        with Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      transient=False) as prog:
            task = prog.add_task("scoring", total=None)
            done = 0

            def update(n: int, backlog: int) -> None:
                nonlocal done
                done += n
                prog.update(task, completed=done, total=done + backlog)

            runner.run(once=True, progress=update)
    else:
        runner.run(once=args.once)


# --- status ---------------------------------------------------------------------------
STALE_S = 120.0


def health(repo, *, now: datetime | None = None) -> dict:  # noqa: ANN001
    """The health verdict behind ``status``'s exit code: 0 healthy, 1 stalled (no heartbeat,
    or work waiting with nothing scored), 2 a watched folder is unreachable, 3 no daemon is
    running, 4 the database disk is almost full."""
    from nscmonitor.service_checks import backlog_facts, backlog_stall, database_disk

    now = now or datetime.now(timezone.utc)
    daemons = repo.daemons(1)
    counts = repo.queue_counts()
    d = daemons[0] if daemons else None
    verdict, code = "healthy", 0
    if d is None or d.state == "stopped":
        verdict, code = "no daemon running", 3
    else:
        age = (now - d.heartbeat_at).total_seconds()
        if age > STALE_S:
            verdict, code = f"stalled: no heartbeat for {age:.0f} s", 1
        elif any(not w.get("reachable", True) for w in d.watched):
            bad = [w["path"] for w in d.watched if not w.get("reachable", True)]
            verdict, code = f"watched folder unreachable: {', '.join(bad)}", 2
        else:
            stall = backlog_stall(*backlog_facts(repo.engine, now), now)
            if stall:
                verdict, code = stall, 1
    disk = database_disk(repo.engine.url.render_as_string(hide_password=False))
    warnings = [disk.message] if disk and not disk.ok else []
    if disk and disk.level == "critical" and code == 0:
        verdict, code = f"database disk almost full: {disk.message}", 4
    return {
        "verdict": verdict, "exit_code": code, "warnings": warnings,
        "daemon": None if d is None else {
            "host": d.host, "pid": d.pid, "state": d.state, "heartbeat_at": d.heartbeat_at.isoformat(),
            "engine": d.engine, "model_version": d.model_version, "images_per_s": d.images_per_s, "watched": d.watched,
        },
        "queue": counts,
        "scored_last_5_min": repo.scored_since(300),
        "errors": [{"id": e.id, "path": e.path, "status": e.status, "reason": e.error, "at": e.updated_at.isoformat()}
                   for e in repo.errors(10)],
    }


def cmd_status(args: argparse.Namespace) -> int:
    from nscmonitor.store.db import open_readonly
    from nscmonitor.store.repo import Repo

    s = settings_from(args)
    h = health(Repo(open_readonly(s.database_url)))
    h["model_integrity"] = model_integrity(s)
    if h["model_integrity"] and not h["model_integrity"]["ok"]:
        h["warnings"].append(f"model refused: {h['model_integrity']['problem']}")
    h["engine_build"] = engine_build_state(s, (h["daemon"] or {}).get("model_version"))
    if args.json:
        print(json.dumps(h, indent=2, default=str))
        return h["exit_code"]
    from rich.console import Console
    from rich.table import Table

    con = Console()
    d = h["daemon"]
    con.print(f"[bold]{h['verdict']}[/bold]")
    for w in h["warnings"]:
        con.print(f"[yellow]warning: {w}[/yellow]")
    if d:
        con.print(f"daemon {d['host']}:{d['pid']} {d['state']}, heartbeat {d['heartbeat_at']}, "
                  f"engine {d['engine']}, model {d['model_version']}, {d['images_per_s'] or 0:.2f} images/s")
        build = h["engine_build"]
        if build is not None:
            colour = "yellow" if build["state"] in ("failed", "no-calibration", "interrupted") else "default"
            con.print(f"  engine build: [{colour}]{build['message']}[/{colour}]")
        for w in d["watched"]:
            con.print(f"  watching {w['path']} ({'polling' if w.get('polling') else 'events'})"
                      + ("" if w.get("reachable", True) else f" [red]UNREACHABLE: {w.get('error')}[/red]"))
    con.print("queue: " + (", ".join(f"{k} {v}" for k, v in sorted(h["queue"].items())) or "empty")
              + f"; scored in the last 5 min: {h['scored_last_5_min']}")
    if h["errors"]:
        t = Table("id", "state", "file", "reason", title="last errors ('nscmonitor requeue ID' retries a quarantined one)")
        for e in h["errors"]:
            t.add_row(str(e["id"]), e["status"], e["path"], e["reason"])
        con.print(t)
    return h["exit_code"]


def served_model_path(s: Settings, version: str | None) -> Path | None:
    """The model file behind a served version: the registry's version folder, else the
    configured model file (served as ``<version>-<sha8>``)."""
    if version is None:
        return None
    try:
        from nscmonitor.registry.registry import Registry
        from nscmonitor.store.db import open_readonly

        for info in Registry(s.models_dir, open_readonly(s.database_url)).list():
            if info.version == version:
                return Path(info.path)
    except Exception as exc:  # status reports; a registry it cannot read is not fatal here
        log.info("registry not readable for the engine build state: %s", exc)
    return s.model if s.model is not None and Path(s.model).is_file() else None


def engine_build_state(s: Settings, version: str | None) -> dict | None:
    """This machine's engine build for the served version (engine-status.json beside the
    model): building since when, ready with its gate, or why fp32 serves."""
    path = served_model_path(s, version)
    if path is None:
        return None
    from nscmonitor.engines.autobuild import summary

    return summary(path, version)


# --- export ---------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    from nscmonitor.report.export import default_images_path, export_images, export_readouts
    from nscmonitor.store.db import open_readonly
    from nscmonitor.store.repo import Repo

    s = settings_from(args)
    repo = Repo(open_readonly(s.database_url))
    out = Path(args.output)
    if args.format != "tidy":
        return _export_sheets(args, s, repo, out)
    n, version = export_readouts(repo, args.experiment, out, model_version=args.model_version,
                                 active=active_version(s))
    per_image = Path(args.per_image) if args.per_image else default_images_path(out)
    k = export_images(repo, args.experiment, per_image)
    print(f"wrote {n} readout rows (model {version or 'none'}) to {out}")
    print(f"wrote {k} image rows to {per_image}")
    return 0


def _export_sheets(args: argparse.Namespace, s: Settings, repo, out: Path) -> int:  # noqa: ANN001
    from nscmonitor.report.prism import export_prism
    from nscmonitor.report.wide import export_wide

    readouts = args.readout or None
    sep = args.sep or ("tab" if args.format == "wide" else "comma")
    if args.format == "wide":
        paths, version = export_wide(repo, args.experiment, out, readouts=readouts, sep=sep, with_sd=args.sd,
                                     with_n=args.n, model_version=args.model_version, active=active_version(s))
    else:
        paths, version = export_prism(repo, args.experiment, out, readouts=readouts, sep=sep,
                                      model_version=args.model_version, active=active_version(s))
    for p in paths:
        print(f"wrote {p}")
    print(f"{len(paths)} {args.format} sheet(s), model {version or 'none'}")
    return 0


def hours_list(text: str) -> list[float]:
    """``24,48,72`` -> hours since induction (the report's --times and the export dialog's field)."""
    try:
        hours = [float(h) for h in text.replace(" ", "").split(",") if h]
    except ValueError:
        raise argparse.ArgumentTypeError(f"times: hours since induction separated by commas, e.g. 24,48,72; "
                                         f"got {text!r}") from None
    if not hours or not all(math.isfinite(h) for h in hours):
        raise argparse.ArgumentTypeError(f"times: finite hours since induction, e.g. 24,48,72; got {text!r}")
    return hours


def cmd_report(args: argparse.Namespace) -> int:
    from nscmonitor.report.browser import NO_BROWSER, find_browser, print_pdf
    from nscmonitor.report.html import write_report
    from nscmonitor.store.db import open_readonly
    from nscmonitor.store.repo import Repo

    s = settings_from(args)
    repo = Repo(open_readonly(s.database_url))
    out = Path(args.output)
    _, version = write_report(repo, args.experiment, out, times=args.times, model_version=args.model_version,
                              active=active_version(s), threshold=args.threshold)
    print(f"wrote {out} (model {version or 'none'})")
    if args.pdf:
        if find_browser() is None:
            print(f"nscmonitor: {NO_BROWSER}", file=sys.stderr)
            return 1
        print(f"wrote {print_pdf(out, out.with_suffix('.pdf'))}")
    return 0


def active_version(s: Settings):  # noqa: ANN202
    def active() -> str | None:
        try:
            from nscmonitor.registry.registry import Registry
            from nscmonitor.store.db import open_engine
        except ImportError:
            return None
        act = Registry(s.models_dir, open_engine(s.database_url, readonly=True)).active()
        return act.version if act else None

    return active


# --- parse ----------------------------------------------------------------------------
def parse_record(path: str, profile: str, plate_format: int | None) -> dict:
    from nscmonitor.intake.filenames import parse_path

    r = parse_path(path, profile, plate_format=plate_format)
    k = r.key
    return {
        "path": path, "kind": r.kind, "profile": r.profile,
        "plate": k.plate if k else None, "well": k.well if k else None, "field": k.field if k else None,
        "channel": k.channel if k else None, "z": k.z if k else None, "timepoint": k.timepoint if k else None,
        "elapsed_h": k.elapsed_h if k else None,
        "acquired_at": k.acquired_at.isoformat() if k and k.acquired_at else None, "reason": r.reason,
    }


def cmd_parse(args: argparse.Namespace) -> int:
    for p in args.paths:
        try:
            rec = parse_record(p, args.profile, args.plate_format)
        except ValueError as exc:
            raise UserFacingError(str(exc)) from exc
        if args.json:
            print(json.dumps(rec))
        else:
            where = " ".join(f"{k}={rec[k]}" for k in ("plate", "well", "field", "channel", "z", "timepoint",
                                                         "elapsed_h", "acquired_at") if rec[k] is not None)
            print(f"{rec['kind']:8} {rec['profile'] or '-':12} {p}  {where}{'  ' + rec['reason'] if rec['reason'] else ''}")
    return 0


# --- doctor ---------------------------------------------------------------------------
def doctor_report(s: Settings) -> list[tuple[str, bool, str]]:
    import importlib.util
    import shutil

    from nscmonitor.service_checks import database_disk, drive_letter_warning
    from nscmonitor.store.db import current_revision, head_revision, open_engine, masked, sqlite_path

    checks: list[tuple[str, bool, str]] = []
    for mod, what in (("onnxruntime", "ONNX Runtime (CPU engine)"), ("torch", "PyTorch (training, reference engine)"),
                      ("tensorrt", "TensorRT (GPU engine)"), ("PySide6", "PySide6 (dashboard)")):
        ok = importlib.util.find_spec(mod) is not None
        checks.append((what, ok, "installed" if ok else "not installed"))
    from nscmonitor.ops.runtime_packages import TENSORRT_DISTRIBUTIONS, installed_versions, ort_flavour_check, tensorrt_check

    checks.append(("ONNX Runtime packages", *ort_flavour_check(installed_versions())))
    trt = tensorrt_check(installed_versions(TENSORRT_DISTRIBUTIONS))
    if trt is not None:
        checks.append(("TensorRT version", *trt))
    try:
        import onnxruntime as ort

        checks.append(("ONNX Runtime providers", True, ", ".join(ort.get_available_providers())))
    except ImportError:
        pass
    from nscmonitor.scoring.formats import reader_status

    checks.extend((f"{fmt} reader", ver is not None, note) for fmt, ver, note in reader_status())
    gpu = shutil.which("nvidia-smi") is not None
    checks.append(("NVIDIA GPU", gpu, "nvidia-smi found" if gpu else "no NVIDIA driver found (CPU engines serve)"))
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
    for w in s.watch:
        ok = w.path.is_dir()
        note = f"{w.path} ({'polling' if w.use_polling() else 'native events'})"
        checks.append((f"watch {w.experiment}", ok, note if ok else f"{note}: not reachable"))
        msg = drive_letter_warning(w.path, is_windows=sys.platform == "win32")
        if msg:
            checks.append((f"watch {w.experiment} path", False, msg))
    if s.model is not None:
        try:
            from nscmonitor.engines.metadata import read_onnx_metadata

            meta = read_onnx_metadata(s.model)
            checks.append(("model", True, f"{s.model}: {meta.name} {meta.version}, classes {', '.join(meta.classes)}"))
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

            sel = select(s.model, s.engine, batch_size=s.batch_size, threads=s.threads,
                         cache_dir=s.models_dir / "engines")
            checks.append(("engine in use", True, sel.engine.name + "".join(f"; skipped {b}: {w}" for b, w in sel.skipped)))
        except Exception as exc:  # report, never crash
            checks.append(("engine in use", False, str(exc)))
    else:
        checks.extend(_active_engine_check(s))
    integrity = model_integrity(s)
    if integrity is not None:
        checks.append(("active model file", integrity["ok"],
                       integrity["problem"] or f"{integrity['version']}: SHA-256 matches the registry"))
    return checks


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


def _active_engine_check(s: Settings) -> list[tuple[str, bool, str]]:
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
                ("engine build", build["state"] in ("ready", "building"), build["message"])]
    except Exception as exc:  # doctor reports, it does not crash
        return [("active model", False, str(exc))]


def cmd_doctor(args: argparse.Namespace) -> int:
    s = settings_from(args)
    if args.model:
        s = with_overrides(s, model=Path(args.model))
    checks = doctor_report(s)
    width = max(len(c[0]) for c in checks)
    for name, ok, note in checks:
        print(f"{'ok ' if ok else '-- '} {name:<{width}}  {note}")
    print(f"config: {s.source or 'defaults (no config file)'}")
    return 0


# --- db -------------------------------------------------------------------------------
def cmd_db(args: argparse.Namespace) -> int:
    from nscmonitor.store import db

    if args.db_command == "roles":
        from nscmonitor.store.roles import RoleNames, psql_script

        print(psql_script(RoleNames(database=args.database, owner=args.owner, daemon=args.daemon,
                                    reader=args.reader)), end="")
        return 0
    if args.db_command == "copy":
        from nscmonitor.store.copy import copy_database

        checks = copy_database(args.source, args.target, batch=args.batch, progress=sys.stderr.isatty())
        for c in checks:
            print(f"{c.table:<16} {c.target_rows:>9} rows  ({c.copied_now} copied now)  verified")
        print(f"copied into {db.masked(args.target)}: {sum(c.target_rows for c in checks)} rows in "
              f"{len(checks)} tables, counts and checksums match the source")
        return 0
    s = settings_from(args)
    if args.db_command == "upgrade":
        before, after, saved = db.upgrade_with_backup(s.database_url)
        print(f"database at {after} (was {before or 'empty'})" + (f"; backup {saved}" if saved else ""))
    elif args.db_command == "backup":
        dest = db.backup(s.database_url, Path(args.output) if args.output else None)
        print(f"backup written to {dest}")
    elif args.db_command == "check":
        problems = db.integrity_check(s.database_url)
        print("\n".join(problems))
        return 0 if problems == ["ok"] else 1
    return 0


# --- registration ---------------------------------------------------------------------
def _common(p: argparse.ArgumentParser) -> None:
    """--config/--db after the command too; SUPPRESS keeps a top-level --config intact."""
    p.add_argument("--config", default=argparse.SUPPRESS, help="configuration TOML file")
    p.add_argument("--db", default=argparse.SUPPRESS, help="database URL (overrides the config)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="watch folders and score images (the daemon)",
                       description="Watch the configured folders (and any --watch DIR), wait until each image is "
                       "completely written, score it and store the predictions. Runs until SIGINT/SIGTERM, or with "
                       "--once until what is there now is scored.")
    _common(p)
    p.add_argument("--watch", action="append", metavar="DIR", help="watch this folder too (repeatable)")
    p.add_argument("--profile", default="auto", help="file-name profile of --watch folders (default: auto)")
    p.add_argument("--experiment", help="experiment name for --watch folders (default: folder name)")
    p.add_argument("--plate-format", type=int, default=96, choices=sorted(PLATE_SHAPES), metavar="WELLS",
                   help=f"plate format of --watch folders: {', '.join(map(str, sorted(PLATE_SHAPES)))} (default 96)")
    p.add_argument("--plate-map", help="plate map CSV (well,condition,...) for --watch folders")
    p.add_argument("--channel", help="score only this channel of --watch folders")
    p.add_argument("--quiet", type=_number(float, 0, MAX_QUIET_S, "seconds"),
                   help="seconds a file must stay unchanged before it is read (default 5)")
    p.add_argument("--polling", action="store_true", help="poll --watch folders instead of native events")
    p.add_argument("--model", help="ONNX model to serve (default: the config's, or the registry's active model)")
    p.add_argument("--engine", choices=ENGINES, help="engine preference: auto, trt, ort-cuda, ort-int8, ort-cpu, torch")
    p.add_argument("--batch-size", type=_number(int, 1, 1024, "a whole number of tiles"), help="tiles per engine call")
    p.add_argument("--once", action="store_true", help="score what is there, then exit")
    p.add_argument("--progress", action="store_true", help="show a progress bar even without a terminal")
    p.add_argument("--no-schedule", action="store_true", help="do not run the scheduled retraining in this daemon")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="daemon health, queue and last errors (exit code != 0 when unhealthy)")
    _common(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("export", help="write the experiment's readouts: tidy CSV (and the per-image CSV), "
                       "Incucyte-style wide sheets or Prism tables",
                       description="tidy: one row per well x timepoint x class, plus the per-image CSV. "
                       "wide: Incucyte-style sheets, one per plate and readout (rows = time points with date/time "
                       "and elapsed hours, columns = wells), written as <output stem>_<readout><suffix>. "
                       "prism: per-condition tables with the replicate wells side by side, one per plate and "
                       "readout. Every format carries the plate map's extra columns; strings are formula-escaped.")
    _common(p)
    p.add_argument("--experiment", required=True)
    p.add_argument("-o", "--output", required=True, help="report file (tidy) or the name the sheets are derived from")
    p.add_argument("--format", choices=("tidy", "wide", "prism"), default="tidy", help="default: tidy")
    p.add_argument("--sep", choices=("tab", "comma"),
                   help="separator of wide/prism sheets (default: tab for wide, comma for prism; tidy is always comma)")
    p.add_argument("--readout", action="append", metavar="KIND:CLASS",
                   help="wide/prism: only this readout, e.g. prob:neuron or fraction:astrocyte (repeatable; "
                   "default: all)")
    p.add_argument("--sd", action="store_true", help="wide: an sd column (across fields) after each well")
    p.add_argument("--n", action="store_true", help="wide: an n column (images scored) after each well")
    p.add_argument("--per-image", help="per-image CSV (default: <report>_images.csv)")
    p.add_argument("--model-version", help="readouts of this model version (default: the active one)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="write the experiment's report: one self-contained HTML file (and its PDF)",
                       description="One HTML file to send: plate maps at chosen times, time courses per condition "
                       "(mean ± sd across replicate wells) with the earliest confident calls, the calls per well, "
                       "QC and quarantine, and the provenance (model version, its validation numbers by hours since "
                       "induction, engines). Figures are inline SVG, each with a save link. --pdf prints it with a "
                       "headless Chromium (apt-get install chromium) to the same name with .pdf.")
    _common(p)
    p.add_argument("--experiment", required=True)
    p.add_argument("-o", "--output", required=True, help="the HTML file to write")
    p.add_argument("--pdf", action="store_true", help="also write <output>.pdf (needs Chromium or Chrome)")
    p.add_argument("--times", type=hours_list, metavar="H1,H2,...",
                   help="plate maps at these hours since induction (nearest time point; default: first, middle, last)")
    p.add_argument("--threshold", type=_number(float, 0.0, 1.0, "a probability"), default=0.6,
                   help="top-class probability a confident call needs (default 0.6)")
    p.add_argument("--model-version", help="readouts of this model version (default: the active one)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("parse", help="show how file names parse (the daemon's own parser)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="paths relative to the watched folder")
    p.add_argument("--profile", default="auto")
    p.add_argument("--plate-format", type=int, choices=sorted(PLATE_SHAPES), metavar="WELLS",
                   help="needed for names with sequential well numbers: "
                   f"{', '.join(map(str, sorted(PLATE_SHAPES)))}")
    p.add_argument("--json", action="store_true", help="one JSON object per path")
    p.set_defaults(func=cmd_parse)

    p = sub.add_parser("doctor", help="check backends, GPU, database, folders and model")
    _common(p)
    p.add_argument("--model", help="also check this model")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("db", help="database maintenance: upgrade (backs up first), backup, check, roles, copy")
    _common(p)
    dsub = p.add_subparsers(dest="db_command", required=True)
    _common(dsub.add_parser("upgrade", help="migrate the schema to this version (after a backup)"))
    b = dsub.add_parser("backup", help="consistent online backup of the SQLite database")
    _common(b)
    b.add_argument("-o", "--output", help="backup file (default: beside the database, time-stamped)")
    _common(dsub.add_parser("check", help="SQLite integrity check (exit 1 on problems)"))
    r = dsub.add_parser("roles", help="print the SQL that creates least-privilege PostgreSQL roles "
                                      "(owner: migrations; daemon: rows only; reader: read-only)")
    r.add_argument("--print", action="store_true", required=True, help="print the psql script (nothing is run)")
    r.add_argument("--database", default="nscmonitor", help="database name (default: nscmonitor)")
    r.add_argument("--owner", default="nsc_owner", help="role that owns the schema and runs 'db upgrade'")
    r.add_argument("--daemon", default="nsc_daemon", help="role of 'nscmonitor run': reads and writes rows")
    r.add_argument("--reader", default="nsc_reader", help="read-only role: dashboard, export, status, report")
    c = dsub.add_parser("copy", help="copy a SQLite database into an upgraded PostgreSQL database (resumable; "
                                     "verified by per-table counts and checksums)")
    c.add_argument("source", help="SQLite URL, e.g. sqlite:///C:/nscmonitor/nscmonitor.db (stop its daemon first)")
    c.add_argument("target", help="PostgreSQL URL at the same schema revision ('db upgrade' it first); the "
                                  "password from PGPASSWORD or .pgpass, not the URL")
    c.add_argument("--batch", type=int, default=1000, help="rows per committed batch (default 1000)")
    p.set_defaults(func=cmd_db)
