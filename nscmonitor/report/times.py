"""Hours since induction as a person types them (``24,48,72``): the report's ``--times`` and
the dashboard's export field read them with the same rule and the same message; and the
time axis the report's and the dashboard's time courses share."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nscmonitor.core.scans import ACQUISITION_SPAN, time_point_name


def parse_hours(text: str) -> list[float]:
    """``"24, 48,72"`` -> ``[24.0, 48.0, 72.0]``; anything else is a ValueError whose message
    says what was expected."""
    try:
        hours = [float(h) for h in text.replace(" ", "").split(",") if h]
    except ValueError:
        raise ValueError(f"times: hours since induction separated by commas, e.g. 24,48,72; got {text!r}") from None
    if not hours or not all(math.isfinite(h) for h in hours):
        raise ValueError(f"times: finite hours since induction, e.g. 24,48,72; got {text!r}")
    return hours


@dataclass(frozen=True)
class TimeAxis:
    """The x of a plate's time courses: hours since induction where they are known, else the
    scan's time point."""

    x: np.ndarray  # T
    hours: bool

    @property
    def label(self) -> str:
        return ("hours since induction" if self.hours
                else "time point (set the folder's induction_time for hours since induction)")

    #: the time keys, where ``x`` is not them (a plate of several acquisitions, without hours)
    keys: np.ndarray | None = None

    def at(self, i: int) -> str:
        """Time point ``i`` as the call texts write it."""
        if self.hours:
            return f"{self.x[i]:.1f} h"
        return f"time point {time_point_name(self.keys[i]) if self.keys is not None else f'{self.x[i]:g}'}"


def time_axis(elapsed_h: np.ndarray, time_keys: np.ndarray) -> TimeAxis:
    """Hours since induction when any time point knows them; otherwise the time points
    themselves (the scan index). ImageXpress, CellVoyager and Harmony names carry a scan index
    and no time, so a folder without ``induction_time`` has no hours at all: its time courses
    were empty until 2026-12-05; now they run over the scans."""
    e = np.asarray(elapsed_h, np.float64)
    if np.isfinite(e).any():
        return TimeAxis(e, True)
    keys = np.asarray(time_keys, np.int64)
    if keys.size and keys.max() >= ACQUISITION_SPAN:  # several acquisitions: their scans in order
        return TimeAxis(np.arange(1, keys.size + 1, dtype=np.float64), False, keys)
    return TimeAxis(keys.astype(np.float64), False)
