"""``nscmonitor requeue``: quarantined images back in the queue."""

from __future__ import annotations

import argparse

from nscmonitor.core.errors import UserFacingError


def cmd_requeue(args: argparse.Namespace) -> int:
    from nscmonitor.cli.args import settings_from
    from nscmonitor.store.db import open_engine, open_readonly
    from nscmonitor.store.requeue import requeue, select_quarantined

    if not (args.ids or args.path or args.plate or args.all_quarantined):
        raise UserFacingError("requeue: name the images: IMAGE_ID..., --path GLOB, --plate NAME or --all-quarantined")
    s = settings_from(args)
    open_readonly(s.database_url).dispose()  # an existing database at this version: a typo never creates one
    engine = open_engine(s.database_url)
    ids = select_quarantined(engine, ids=args.ids, path_glob=args.path, plate=args.plate,
                             everything=args.all_quarantined)
    if args.dry_run:
        print(f"{len(ids)} quarantined image(s) match" + (f": ids {', '.join(map(str, ids))}" if ids else ""))
        return 0
    n = requeue(engine, ids)
    print(f"{n} quarantined image(s) back in the queue; the running daemon scores them next")
    missed = sorted(set(args.ids or ()) - set(ids))
    if missed:
        print(f"not requeued: ids {', '.join(map(str, missed))} are not quarantined (failed images are retried by "
              "the daemon on their own) or do not exist")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("requeue", help="put quarantined images back in the queue (after fixing the cause)",
                       description="Quarantined images go back to the queue with fresh attempts: by image id "
                       "(as in 'status' and the dashboard), by a glob on the path as shown (quote it), by plate, "
                       "or all of them. The running daemon picks them up; nothing else changes.")
    p.add_argument("--config", default=argparse.SUPPRESS, help="configuration TOML file")
    p.add_argument("--db", default=argparse.SUPPRESS, help="database URL (overrides the config)")
    p.add_argument("ids", nargs="*", type=int, metavar="IMAGE_ID", help="image ids")
    p.add_argument("--path", metavar="GLOB", help="paths matching this glob, e.g. '*/TimePoint_3/*'")
    p.add_argument("--plate", metavar="NAME", help="every quarantined image of this plate")
    p.add_argument("--all-quarantined", action="store_true", help="every quarantined image")
    p.add_argument("--dry-run", action="store_true", help="only say how many images match")
    p.set_defaults(func=cmd_requeue)
