"""Model lifecycle commands: labels import, models list|show|promote|rollback|register|prune|forecast,
retrain-now."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from nscmonitor.cli.args import add_db_options, bounded, settings_from
from nscmonitor.core import ood_record
from nscmonitor.registry.prune import DEFAULT_KEEP, REMOVED_NOTE

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from nscmonitor.config import Settings
    from nscmonitor.registry.registry import Registry
    from nscmonitor.store.registry import ModelInfo


def _registry(args: argparse.Namespace, *, readonly: bool = False) -> tuple[Settings, Engine, Registry]:
    """Listing and showing only read: a mistyped database path is an error, not a new database."""
    from nscmonitor.registry.registry import Registry
    from nscmonitor.store.db import ensure_schema, open_engine, open_readonly

    s = settings_from(args)
    if readonly:
        engine = open_readonly(s.database_url)
    else:
        engine = open_engine(s.database_url)
        ensure_schema(engine)
    return s, engine, Registry(s.models_dir, engine)


def cmd_labels_import(args: argparse.Namespace) -> int:
    from nscmonitor.labels import import_labels

    _, engine, _ = _registry(args)
    version, n = import_labels(engine, Path(args.file))
    print(f"imported label set {version}: {n} wells labelled")
    return 0


def cmd_forecast(args: argparse.Namespace) -> int:
    """The well forecast serving (the configured file, or a version retraining installed) and
    the versions it replaced; ``--rollback`` serves the one before."""
    from nscmonitor.registry import forecasts as FR

    s = settings_from(args)
    if s.forecast_model is None:
        print("no forecast_model configured: the daemon runs no well forecast")
        return 0
    if args.rollback:
        back = FR.rollback(s.models_dir)
        print(f"rolled back: {back.version if back else f'the configured {s.forecast_model}'} serves the well "
              "forecast again (a running daemon switches between batches)")
    rows = FR.history(s.models_dir)
    if args.json:
        print(json.dumps({"configured": str(s.forecast_model), "serving": str(FR.served(s.models_dir, s.forecast_model)),
                          "installed": [r.__dict__ for r in rows]}, indent=2))
        return 0
    print(f"  configured: {s.forecast_model}" + ("   <- serving" if not rows else ""))
    for i, r in enumerate(rows):
        print(f"  {r.version:<24} installed {r.installed_at}  {r.reason}" + ("   <- serving" if i == len(rows) - 1
                                                                            else ""))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    if args.models_command == "forecast":
        return cmd_forecast(args)
    s, engine, reg = _registry(args, readonly=args.models_command in ("list", "show"))
    if args.models_command == "list":
        from nscmonitor.store.registry import served_files

        registered = reg.list()
        names = {r.version for r in registered}
        rows = registered + [r for r in served_files(engine) if r.version not in names]
        if args.json:
            print(json.dumps([{"version": r.version, "state": r.state, "scheme": r.scheme, "classes": r.classes,
                               "labels_version": r.labels_version, "created_at": r.created_at.isoformat()}
                              for r in rows], indent=2))
            return 0
        if not registered:
            print("no model versions registered ('nscmonitor models register RUN_DIR')"
                  + ("; model files the daemon served directly:" if rows else ""))
        for r in rows:
            acc = r.metrics.get("well", {}).get("accuracy") if isinstance(r.metrics.get("well"), dict) else None
            print(f"{'*' if r.state == 'active' else ' '} {r.version:<40} {r.state:<10} {r.scheme:<11}"
                  f" labels {r.labels_version or '-'}  {r.created_at:%Y-%m-%d %H:%M}"
                  + (f"  well acc {acc:.3f}" if isinstance(acc, float) else ""))
    elif args.models_command == "show":
        from nscmonitor.store.registry import find_version, served_file

        r = find_version(engine, args.version) or served_file(engine, args.version) or reg.get(args.version)
        print(json.dumps({"version": r.version, "state": r.state, "path": r.path, "sha256": r.sha256,
                          "scheme": r.scheme, "classes": r.classes, "labels_version": r.labels_version,
                          "metrics": r.metrics, "ood": ood_record.summary((r.meta or {}).get("ood")),
                          "engine": {"state": "removed", "message": REMOVED_NOTE} if r.state == "removed"
                          else engine_summary(r)}, indent=2, default=str))
    elif args.models_command == "register":
        r = reg.register(Path(args.source), activate_if_first=not args.candidate,
                         calibration=Path(args.calibration) if args.calibration else None)
        print(f"registered {r.version} as {r.state}")
        if not args.no_engine:
            build_engine(s, engine, r)
    elif args.models_command == "promote":
        r = reg.promote(args.version, reason="promoted by hand")
        print(f"{r.version} is now active (a running daemon switches between batches)")
        build_engine(s, engine, r)
    elif args.models_command == "rollback":
        r = reg.rollback()
        print(f"rolled back: {r.version} is active again")
        build_engine(s, engine, r)
    elif args.models_command == "prune":
        return cmd_prune(args, s, engine)
    return 0


def cmd_prune(args: argparse.Namespace, s: Settings, engine: Engine) -> int:
    from nscmonitor.registry.prune import describe, prune

    report = prune(engine, s.models_dir / "versions", keep=args.keep, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "keep": args.keep, "removed": report.removed,
                          "freed_bytes": report.freed_bytes,
                          "failed": [{"what": v, "reason": why} for v, why in report.failed],
                          "runs": [{"run": r, "status": st, "checkpoint_bytes": n} for r, st, n in report.runs],
                          "versions": [{"version": d.version, "state": d.state, "remove": d.remove,
                                        "reason": d.reason, "bytes": report.sizes.get(d.version, 0)}
                                       for d in report.decisions]}, indent=2))
    else:
        print("\n".join(describe(report, dry_run=args.dry_run)))
    return 1 if report.failed else 0


def engine_summary(info: ModelInfo) -> dict:
    """This machine's engine for a registered version (engine-status.json beside it)."""
    from nscmonitor.engines.autobuild import summary

    return summary(Path(info.path), info.version)


def build_engine(s: Settings, db: Engine, info: ModelInfo) -> None:
    """Build on arrival from the command line: the best engine this machine has for the
    version, unless it already has one (or failed to get one under the same model,
    calibration set, runtimes and machine); the child's progress bar shows here. A failure
    keeps fp32 serving and is reported like the daemon reports it."""
    from nscmonitor.engines import autobuild
    from nscmonitor.hooks import emit

    if not autobuild.wants_build(s.engine):
        return
    status = autobuild.ensure(Path(info.path), threads=s.threads)
    message = autobuild.describe(status, info.version)
    print(f"engine: {message}")
    if status is None or status.state in ("failed", "no-calibration"):
        emit(db, "engine_build_failed", message, level="warning", hook=s.retrain.hook,
             data={"version": info.version, "state": status.state if status else None})


def cmd_retrain_now(args: argparse.Namespace) -> int:
    from nscmonitor.schedule.retrain import run_retrain

    s = settings_from(args)
    out = run_retrain(s, trigger="manual", force=args.force)
    print(f"retrain {out.run_id}: {out.status}: {out.reason}")
    forecast = (out.numbers or {}).get("forecast")
    if forecast:
        print(f"well forecast: {forecast['status']}: {forecast['reason']}")
    return 0 if out.status in ("promoted", "rejected", "skipped") else 1


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("labels", help="end-point labels (e.g. from Tuj1/GFAP/O4 stains) for retraining")
    add_db_options(p)
    lsub = p.add_subparsers(dest="labels_command", required=True)
    imp = lsub.add_parser("import", help="import a CSV: experiment, plate, well, label or frac_<class> columns "
                          "(all rows valid or nothing is imported)")
    imp.add_argument("file")
    p.set_defaults(func=cmd_labels_import)

    p = sub.add_parser("models", help="model versions: list, show, register, promote, rollback, prune; "
                       "the well forecast")
    add_db_options(p)
    msub = p.add_subparsers(dest="models_command", required=True)
    ml = msub.add_parser("list", help="registered versions, then model files a daemon served directly "
                                      "(--model; state 'served from a file')")
    ml.add_argument("--json", action="store_true")
    msub.add_parser("show", help="one version, registered or served from a file: path, metrics, OOD flag, "
                                 "this machine's engine").add_argument("version")
    reg = msub.add_parser("register", help="add a run dir (or model.onnx) to the registry")
    reg.add_argument("source")
    reg.add_argument("--candidate", action="store_true", help="register as candidate even if none is active")
    reg.add_argument("--no-engine", action="store_true",
                     help="do not build this machine's engine now (the daemon builds it when it serves the version)")
    reg.add_argument("--calibration", metavar="DIR",
                     help="calibration and held-out tiles for a model whose training run wrote none: a labelled "
                          "tiles folder (tiles.csv with path and split columns) or a calibration.npz; without "
                          "one such a model is served in fp32")
    msub.add_parser("promote", help="make a version active").add_argument("version")
    msub.add_parser("rollback", help="re-activate the previously active version")
    pr = msub.add_parser("prune", help="free the disk superseded versions hold: delete the folders (model, "
                         "checkpoint, calibration tiles, engines) of retired versions beyond the rollback "
                         "targets kept and of candidates never promoted (their records stay, state removed), "
                         "and the checkpoints ended retrain runs left")
    pr.add_argument("--keep", type=bounded(int, 0, 1000, "a whole number of versions"), default=DEFAULT_KEEP,
                    metavar="N", help=f"rollback targets kept, most recent first (default {DEFAULT_KEEP})")
    pr.add_argument("--dry-run", action="store_true", help="list what would be removed and the space freed")
    pr.add_argument("--json", action="store_true")
    fc = msub.add_parser("forecast", help="the well forecast model serving (forecast_model, or a version "
                         "retraining installed) and the versions it replaced")
    fc.add_argument("--rollback", action="store_true", help="serve the forecast model before the current one")
    fc.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("retrain-now", help="retrain on the current labels now (as the schedule would)")
    add_db_options(p)
    p.add_argument("--force", action="store_true", help="retrain even if the labels did not change")
    p.set_defaults(func=cmd_retrain_now)
