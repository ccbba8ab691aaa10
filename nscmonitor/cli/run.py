"""``nscmonitor run``: the daemon in the foreground (the service runs the same command)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from nscmonitor.cli.args import add_db_options, bounded, settings_from
from nscmonitor.config import ENGINES, MAX_QUIET_S, Settings, WatchFolder, with_overrides
from nscmonitor.core.domain import PLATE_SHAPES
from nscmonitor.readers.decode import PIXEL_SIZE_RANGE_UM

log = logging.getLogger("nscmonitor.cli")


def _z_setting(value: str) -> str:
    from nscmonitor.core.selection import norm_z

    try:
        return norm_z(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_run(args: argparse.Namespace) -> int:
    s = settings_from(args)
    if args.watch:
        extra = tuple(WatchFolder(path=Path(d).resolve(), experiment=args.experiment or Path(d).resolve().name,
                                  profile=args.profile, plate_format=args.plate_format,
                                  plate_map=Path(args.plate_map) if args.plate_map else None,
                                  quiet_seconds=args.quiet if args.quiet is not None else 5.0,
                                  polling=True if args.polling else None, channel=args.channel, z=args.z,
                                  pixel_size_um=args.pixel_size)
                      for d in args.watch)
        s = with_overrides(s, watch=s.watch + extra)
    s = with_overrides(s, engine=args.engine, batch_size=args.batch_size)
    from nscmonitor.store.instance import acquire_daemon

    lock = acquire_daemon(s.database_url)  # SQLite: one daemon per database, a second refuses naming the first
    try:
        return _serve(args, s)
    finally:
        lock.release()


def _serve(args: argparse.Namespace, s: Settings) -> int:
    from nscmonitor.daemon import build_runner, install_signal_handlers
    from nscmonitor.store.reads import Repo

    runner = build_runner(s, model=Path(args.model) if args.model else None, watch=not args.score_only,
                          score=not args.watch_only)
    install_signal_handlers(runner.stop_event)
    runner.setup()
    m = runner.model
    watching = ("watching " + ", ".join(str(f.cfg.path) for f in runner.folders) if runner.watch
                else "scoring only (no folders watched here)")
    if m is None:
        print(f"nscmonitor: {watching} (intake only: the daemons sharing this database score)", file=sys.stderr)
    else:
        print(f"nscmonitor: serving model {m.version} with {m.engine.name}; {watching}", file=sys.stderr)
    if m is not None and m.version.startswith("tiny-untrained"):
        print("nscmonitor: WARNING: this is an untrained demo model; its predictions mean nothing.", file=sys.stderr)
    if m is not None and runner.engine_builds is not None:
        print(f"nscmonitor: engine: {runner.engine_builds.summary(m.path, m.version)['message']}", file=sys.stderr)
    if m is not None and m.engine.metadata.pixel_size_um and runner.watch:
        from nscmonitor.ops.health import pixel_size_source

        for f in runner.folders:
            note, advise = pixel_size_source(f.cfg, s.max_pixels)
            if advise:
                print(f"nscmonitor: WARNING: watch {f.cfg.path}: {note}", file=sys.stderr)
    if runner.watch:
        from nscmonitor.intake.channel_survey import survey

        for f in runner.folders:
            try:
                found = survey(f.cfg, s.custom_profiles)
            except Exception as exc:  # advice only: the daemon starts all the same
                log.warning("channels of %s not surveyed: %s", f.cfg.path, exc)
                continue
            if found.mismatch or found.mixed:
                print(f"nscmonitor: WARNING: watch {f.cfg.path}: {found.note()}", file=sys.stderr)
            if found.untimed:
                print(f"nscmonitor: WARNING: watch {f.cfg.path}: {found.time_note()}", file=sys.stderr)
    sched = None
    if not args.once and not args.no_schedule:
        from nscmonitor.schedule.ownership import OwnedSchedule

        # one daemon of those sharing a database runs the schedule; the others take over when it stops
        sched = OwnedSchedule(s, config_path=getattr(args, "config", None), every_s=s.lease_seconds / 3)
        sched.start()
        print(f"nscmonitor: {sched.describe()}", file=sys.stderr)
    try:
        _run_loop(args, runner)
    finally:
        if sched is not None:
            sched.stop()
    repo = Repo(runner.store.engine)
    counts = repo.queue_counts()
    print("nscmonitor: stopped; images by state: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
          file=sys.stderr)
    from nscmonitor.ops.health import scoring_warnings

    for warning in scoring_warnings(repo):
        print(f"nscmonitor: WARNING: {warning}", file=sys.stderr)
    return 0


def _run_loop(args: argparse.Namespace, runner: Any) -> None:
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


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="watch folders and score images (the daemon)",
                       description="Watch the configured folders (and any --watch DIR), wait until each image is "
                       "completely written, score it and store the predictions. Runs until SIGINT/SIGTERM, or with "
                       "--once until what is there now is scored. Several daemons may share one PostgreSQL "
                       "database (each watching its own folders, all scoring from one queue with leases; "
                       "--score-only, --watch-only); on SQLite one daemon runs per database.")
    add_db_options(p)
    p.add_argument("--watch", action="append", metavar="DIR", help="watch this folder too (repeatable)")
    p.add_argument("--profile", default="auto", help="file-name profile of --watch folders (default: auto)")
    p.add_argument("--experiment", help="experiment name for --watch folders (default: folder name)")
    p.add_argument("--plate-format", type=int, default=96, choices=sorted(PLATE_SHAPES), metavar="WELLS",
                   help=f"plate format of --watch folders: {', '.join(map(str, sorted(PLATE_SHAPES)))} (default 96)")
    p.add_argument("--plate-map", help="plate map CSV (well,condition,...) for --watch folders")
    p.add_argument("--channel", help="score only this channel of --watch folders")
    p.add_argument("--z", type=_z_setting, default="all", metavar="all|projection|N",
                   help="which z planes of --watch folders are scored: all (the default), projection (images whose "
                        "name gives no z index, e.g. ImageXpress's projection beside its ZStep folders) or plane N")
    p.add_argument("--pixel-size", type=bounded(float, *PIXEL_SIZE_RANGE_UM, "micrometres per pixel"), metavar="UM",
                   help="pixel size of --watch folders' files that state none (many TIFF exports carry "
                        "none in their metadata or resolution tags): they are resampled to the model's scale "
                        "and another magnification is flagged, as for files that state it")
    p.add_argument("--quiet", type=bounded(float, 0, MAX_QUIET_S, "seconds"),
                   help="seconds a file must stay unchanged before it is read (default 5)")
    p.add_argument("--polling", action="store_true", help="poll --watch folders instead of native events")
    p.add_argument("--model", help="ONNX model to serve (default: the config's, or the registry's active model)")
    p.add_argument("--engine", choices=ENGINES,
                   help="engine preference (default auto: the fastest certified engine here; naming a built int8 "
                        "engine serves it even where it is slower than fp32)")
    p.add_argument("--batch-size", type=bounded(int, 1, 1024, "a whole number of tiles"), help="tiles per engine call")
    p.add_argument("--once", action="store_true", help="score what is there, then exit")
    p.add_argument("--progress", action="store_true", help="show a progress bar even without a terminal")
    p.add_argument("--no-schedule", action="store_true",
                   help="do not run the scheduled retraining in this daemon (on a shared PostgreSQL database one "
                   "daemon runs it anyway, the others take over when it stops)")
    part = p.add_mutually_exclusive_group()
    part.add_argument("--score-only", action="store_true",
                      help="only score from the shared queue, watch no folders (e.g. on a GPU server); needs a "
                      "PostgreSQL database that other daemons fill (see docs/scale.md)")
    part.add_argument("--watch-only", action="store_true",
                      help="only watch folders and queue their images; other daemons on the same PostgreSQL "
                      "database score them")
    p.set_defaults(func=cmd_run)
