"""``nscmonitor status``: the health verdict (``ops.health``) printed, its code as the exit code."""

from __future__ import annotations

import argparse
import json

from nscmonitor.cli.args import add_db_options, settings_from
from nscmonitor.core import ood_record
from nscmonitor.ops.health import (engine_build_state, forecast_state, health, model_integrity, model_ood_state,
                                   served_model_path)


def cmd_status(args: argparse.Namespace) -> int:
    from nscmonitor.store.db import open_readonly
    from nscmonitor.store.reads import Repo
    from nscmonitor.store.schedule_lock import schedule_owner

    s = settings_from(args)
    engine = open_readonly(s.database_url)
    report = health(Repo(engine))
    report["retrain_schedule_owner"] = schedule_owner(engine)  # shared PostgreSQL only; else None
    report["model_integrity"] = model_integrity(s)
    if report["model_integrity"] and not report["model_integrity"]["ok"]:
        report["warnings"].append(f"model refused: {report['model_integrity']['problem']}")
    version = (report["daemon"] or {}).get("model_version")
    served = served_model_path(s, version)
    report["engine_build"] = engine_build_state(s, version, served)
    report["model_ood"] = model_ood_state(s, version, served)
    report["forecast"] = forecast_state(s)
    if report["forecast"] and report["forecast"].get("problem"):
        report["warnings"].append(f"well forecast: {report['forecast']['problem']}")
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return report["exit_code"]
    from rich.console import Console
    from rich.table import Table

    con = Console()
    d = report["daemon"]
    con.print(f"[bold]{report['verdict']}[/bold]")
    for w in report["warnings"]:
        con.print(f"[yellow]warning: {w}[/yellow]")
    if d:
        con.print(f"daemon {d['host']}:{d['pid']} {d['state']}, heartbeat {d['heartbeat_at']}, "
                  f"engine {d['engine']}, model {d['model_version']}, {d['images_per_s'] or 0:.2f} images/s")
        build = report["engine_build"]
        if build is not None:
            colour = "yellow" if build["state"] in ("failed", "no-calibration", "interrupted") else "default"
            con.print(f"  engine build: [{colour}]{build['message']}[/{colour}]")
        ood = report["model_ood"]
        if ood is not None:
            con.print("  its out-of-distribution flag: " + (
                f"{ood_record.short(ood)} (threshold {ood['threshold']:.3g}; 'nscmonitor doctor' names the tests)"
                if ood["available"] else f"[yellow]unavailable[/yellow]: {ood['why']}"))
        for w in d["watched"]:
            scan = (f"; {w['files']:,} files, last rescan {w['rescan_s']:.1f} s"
                    if w.get("files") is not None and w.get("rescan_s") is not None else "")
            con.print(f"  watching {w['path']} ({'polling' if w.get('polling') else 'events'}{scan})"
                      + ("" if w.get("reachable", True) else f" [red]UNREACHABLE: {w.get('error')}[/red]"))
    fc = report["forecast"]
    if fc and fc.get("serving"):
        con.print(f"well forecast: {fc['version'] or 'the configured file'} ({fc['serving']})"
                  + (f", installed by retraining: {fc['reason']}" if fc["version"] else ""))
        ood = fc["ood"]
        con.print("  its out-of-distribution flag: " + (
            f"threshold {ood['threshold']:.3g} ({ood['threshold_from']}; flagged "
            f"{ood['flagged_held_out_plates']:.1%} of plates it was not fitted on)" if ood["available"]
            else f"[yellow]unavailable[/yellow]: {ood['why']}"))
    if report["retrain_schedule_owner"]:
        con.print(f"retrain schedule run by the daemon on {report['retrain_schedule_owner']} (host:PID)")
    con.print("queue: " + (", ".join(f"{k} {v}" for k, v in sorted(report["queue"].items())) or "empty")
              + f"; scored in the last 5 min: {report['scored_last_5_min']}")
    unlike = report["unlike_training_data"]
    if unlike["of_newest_scored"]:
        con.print(f"unlike the model's training data: {unlike['flagged']} of the newest {unlike['of_newest_scored']} "
                  "scored images (the out-of-distribution flag; 4-5 % is the model's own rate)")
    if report["errors"]:
        t = Table("id", "state", "file", "reason", title="last errors ('nscmonitor requeue ID' retries a quarantined one)")
        for e in report["errors"]:
            t.add_row(str(e["id"]), e["status"], e["path"], e["reason"])
        con.print(t)
    return report["exit_code"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="daemon health, queue and last errors (exit code != 0 when unhealthy)")
    add_db_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)
