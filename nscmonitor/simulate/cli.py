"""``nscmonitor simulate`` and ``nscmonitor simulate-tiles``: parsers here, work in the funcs."""

from __future__ import annotations

import argparse
import os
import threading

from nscmonitor.core.errors import UserFacingError

CONDITION_SETS = ("recipes", "dose", "mixtures")  # nscmonitor.simulate.biology, without importing numpy here
FRAMES = {"1408x1040": (1040, 1408), "704x520": (520, 704), "2048x2048": (2048, 2048)}
VENDOR_CHOICES = ("incucyte", "imagexpress", "harmony", "cytation", "yokogawa", "micromanager")


def _hours_list(text: str) -> list[float]:
    try:
        hours = [float(h) for h in text.split(",") if h.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of hours: {text!r}") from None
    if not hours or min(hours) < 0:
        raise argparse.ArgumentTypeError("hours must be >= 0")
    return hours


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "simulate", help="write a simulated NSC time-lapse the way a microscope vendor does",
        description="Render a procedural NSC differentiation culture and write it under OUT_DIR with the "
        "vendor's file names and folder layout, at the pace of a real scan divided by --speed. "
        "A ground-truth manifest (simulation-manifest.csv) is written beside the images.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--vendor", choices=VENDOR_CHOICES, default="incucyte")
    p.add_argument("--plate", type=int, choices=(24, 48, 96, 384), default=96, help="plate format (wells)")
    p.add_argument("--fields", type=int, default=4, help="fields per well (default 4)")
    p.add_argument("--hours", type=float, default=120.0, help="duration after induction (default 120)")
    p.add_argument("--interval", type=float, default=2.0, help="hours between scans (default 2)")
    p.add_argument("--speed", type=float, default=600.0, help="factor on real time; 0 = as fast as possible")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plate-map", help="CSV well,condition[,neuron,astrocyte,oligodendrocyte,undifferentiated]")
    p.add_argument("--wells", help="comma-separated wells to image (default: all in the plate map)")
    p.add_argument("--frame", choices=tuple(FRAMES), default="1408x1040")
    p.add_argument("--bit-depth", type=int, choices=(8, 12), default=8)
    p.add_argument("--modality", choices=("phase", "brightfield"), default="phase")
    p.add_argument("--pixel-size", type=float, default=1.24, help="um per pixel (10x: 1.24)")
    p.add_argument("--no-artefacts", action="store_true", help="clean images: no noise, drift, debris, ...")
    _biology_args(p)
    p.set_defaults(func=run_simulate)

    t = subparsers.add_parser(
        "simulate-tiles", help="write labelled simulated tiles (tiles.csv + tiles.json) for training",
        description="Render simulated plates and cut them into labelled tiles split by well into "
        "train/val/test (the last plate is the test set when there are several).",
    )
    t.add_argument("out_dir", metavar="OUT_DIR")
    t.add_argument("--plates", type=int, default=2)
    t.add_argument("--tile-size", type=int, default=224)
    t.add_argument("--hours", type=_hours_list, default=[0, 24, 48, 72, 96, 120], help="e.g. 0,24,48,72,96,120")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--wells-per-condition", type=int, default=4)
    t.add_argument("--bit-depth", type=int, choices=(8, 12), default=12)
    t.add_argument("--workers", type=int, default=0,
                   help="processes rendering plates at once (default 0: one per CPU; the same files either way)")
    _biology_args(t)
    t.set_defaults(func=run_tiles)


def _biology_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--conditions", choices=CONDITION_SETS, default="recipes",
                   help="recipes: the fixed recipes on every plate; dose: each plate's own doses of a neuronal "
                   "inducer; mixtures: each plate's own random fate mixtures (default recipes; a --plate-map wins)")
    p.add_argument("--fixed-biology", action="store_true",
                   help="no plate-to-plate or well-to-well biology (timing, efficiency, density, deaths)")


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())


def run_simulate(args: argparse.Namespace) -> int:
    from nscmonitor.simulate.artefacts import Artefacts
    from nscmonitor.simulate.culture import load_condition_map
    from nscmonitor.simulate.microscope import Microscope
    from nscmonitor.simulate.render import Camera

    if args.speed < 0:
        raise UserFacingError("--speed must be >= 0")
    plate_map = load_condition_map(args.plate_map, args.plate) if args.plate_map else None
    wells = [w.strip() for w in args.wells.split(",") if w.strip()] if args.wells else None
    try:
        scope = Microscope(
            vendor=args.vendor, plate_format=args.plate, fields=args.fields, hours=args.hours,
            interval_h=args.interval, seed=args.seed, plate_map=plate_map, wells=wells,
            camera=Camera(shape=FRAMES[args.frame], px_um=args.pixel_size, bit_depth=args.bit_depth,
                          modality=args.modality),
            artefacts=Artefacts.none() if args.no_artefacts else Artefacts(),
            condition_set=args.conditions, vary_biology=not args.fixed_biology,
        )
    except ValueError as exc:
        raise UserFacingError(str(exc)) from exc
    total = sum(1 for _ in scope.shots())
    stop = threading.Event()
    with _progress() as bar:
        task = bar.add_task(f"{args.vendor} plate {scope.plate_name}", total=total)
        try:
            manifest = scope.run(args.out_dir, speed=args.speed, stop_event=stop,
                                 on_frame=lambda f: bar.update(task, advance=1))
        except KeyboardInterrupt:
            stop.set()
            raise
    print(f"wrote {total} images under {args.out_dir}; ground truth in {manifest}")
    return 0


def run_tiles(args: argparse.Namespace) -> int:
    from nscmonitor.simulate.labelled_tiles import export_tiles

    if args.plates < 1 or args.tile_size < 16 or args.workers < 0:
        raise UserFacingError("need --plates >= 1, --tile-size >= 16 and --workers >= 0")
    with _progress() as bar:
        task = bar.add_task("tiles", total=None)
        path = export_tiles(args.out_dir, plates=args.plates, hours=args.hours, tile_size=args.tile_size,
                            seed=args.seed, wells_per_condition=args.wells_per_condition, bit_depth=args.bit_depth,
                            condition_set=args.conditions, vary_biology=not args.fixed_biology,
                            progress=lambda done, total: bar.update(task, completed=done, total=total),
                            workers=args.workers or os.cpu_count() or 1)
    print(f"wrote {path}")
    return 0
