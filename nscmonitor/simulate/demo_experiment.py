"""A realistic demo plate for ``make demo``: several conditions, days of culture, minutes of wall time."""

from __future__ import annotations

import threading
from pathlib import Path

from nscmonitor.simulate.microscope import Microscope
from nscmonitor.simulate.render import Camera

DEMO_WELLS = tuple(f"{r}{c:02d}" for r in "ABCD" for c in range(1, 13))


def demo_plate(out_dir: str | Path, *, vendor: str = "incucyte", hours: float = 120.0, interval_h: float = 4.0,
               speed: float = 3600.0, seed: int = 1, wells: tuple[str, ...] = DEMO_WELLS, fields: int = 2,
               stop_event: threading.Event | None = None) -> Path:
    """Four rows of a 96-well plate (all six default conditions, 8 wells each) imaged every
    4 h for 5 days with 704 x 520 frames; at speed 3600 one simulated hour takes a second;
    rendering 2,976 frames (~50 ms each on one core) makes it a few minutes in all.
    Returns the ground-truth manifest path."""
    scope = Microscope(vendor=vendor, plate_format=96, fields=fields, hours=hours, interval_h=interval_h, seed=seed,
                       wells=list(wells), camera=Camera(shape=(520, 704)), plate_name="DEMO-NSC")
    return scope.run(out_dir, speed=speed, stop_event=stop_event)
