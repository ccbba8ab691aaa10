"""Which scan (plate read) an image belongs to: its time key.

An image whose name carries a scan index (ImageXpress ``TimePoint_n``, Harmony ``sk``) or the
time since the first scan (Incucyte ``00d04h00m``) is keyed by it. Harmony, CellVoyager and
MetaXpress count scan indexes from 1 in each measurement (acquisition): a plate's acquisitions,
numbered in the order met, are ``ACQUISITION_SPAN`` keys apart, so the plate read daily as one
measurement a day gets a time point per day (``acquisition_time_key``).

One with neither (IN Cell runs without a time token, Cellomics, bare ImageXpress names) is
timed by its file's clock, so every image of one plate read has a time of its own: keyed by
its minute, the fields of a well split across minute boundaries into readouts of one or two
fields each, and the plate's wells never share a time point (the plate map's latest time point
held the few wells imaged in its last minute). A wall-clock stamp in the name (Incucyte's, a
Nikon JOBS run's start) is keyed the same way: one scan's images share its minute and so its
read. A read is a run of images close in time in which each position (well, field, channel,
plane) appears once, so an image joins the nearest read within ``gap`` minutes that does not
hold its position yet, else it starts a read of its own, keyed by its minute. The position
rule tells apart reads with no pause between them (a plate imaged continuously); the gap,
reads that repeat a position only after a pause.

Pure: the writer reads the plate's images near a batch and stores what this returns."""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from nscmonitor.core.domain import ImageKey

#: images of one read are written seconds apart, a minute or two at most between fields while
#: the instrument refocuses or changes plates; reads of a differentiation time-lapse are
#: hours apart
SCAN_GAP_MIN = 10.0
#: no plate read lasts a day: a read's images lie within this many minutes of its key, which
#: bounds the stored images the writer has to look at
MAX_READ_MIN = 24 * 60


#: a plate's acquisitions are this many scan indexes apart in the time keys: the first keeps
#: its scan index as its key, the second counts from 100001
ACQUISITION_SPAN = 100_000


def acquisition_time_key(ordinal: int, scan: int) -> int:
    """The time key of scan ``scan`` (1-based) of a plate's acquisition ``ordinal`` (0 for its
    first): vendors that count scans from 1 in each measurement would otherwise give every
    measurement of a plate read daily the same key."""
    return ordinal * ACQUISITION_SPAN + scan


def time_source(key: ImageKey) -> str:
    """How an image's name times it: ``"index"`` (a scan index or the time since the first
    scan: keyed by it), ``"stamp"`` (a wall-clock stamp) or ``"clock"`` (nothing: its file's
    clock). The last two need the folder's induction time, and are grouped into reads."""
    if key.timepoint is not None or key.elapsed_h is not None:
        return "index"
    return "stamp" if key.acquired_at is not None else "clock"


def acquisition_and_scan(key: int) -> tuple[int, int]:
    """The inverse of ``acquisition_time_key``: (acquisition, 1-based; scan within it)."""
    key = int(key)
    return key // ACQUISITION_SPAN + 1, key % ACQUISITION_SPAN


def time_point_name(key: int) -> str:
    """A time key as people read it: the scan index, and for a plate's later acquisitions
    which acquisition it counts in."""
    acquisition, scan = acquisition_and_scan(key)
    return str(scan) if acquisition == 1 else f"{scan} of acquisition {acquisition}"


@dataclass(frozen=True)
class Placed:
    """An image already in a read: its minute since induction, its read's key, its position."""

    minute: float
    key: int
    position: Hashable


def scan_keys(placed: Sequence[Placed], new: Sequence[tuple[float, Hashable]], *,
              taken: frozenset[int] | set[int] = frozenset(), gap: float = SCAN_GAP_MIN) -> list[int]:
    """The read key of each new image (``(minute, position)``), in the order given.

    New images are placed earliest first, each seeing those placed before it, so a batch
    gives the same reads whatever order its files were found in. ``taken``: keys in use
    elsewhere on the plate, never given to a new read."""
    minutes: list[float] = []
    keys: list[int] = []
    held: dict[int, set[Hashable]] = {}
    for p in sorted(placed, key=lambda p: p.minute):
        minutes.append(p.minute)
        keys.append(p.key)
        held.setdefault(p.key, set()).add(p.position)
    used = set(taken) | set(held)
    out: list[int] = [0] * len(new)
    for i in sorted(range(len(new)), key=lambda i: new[i][0]):
        minute, position = new[i]
        key = _nearest_free(minutes, keys, held, minute, position, gap)
        if key is None:
            key = round(minute)
            while key in used:
                key += 1
            used.add(key)
        j = bisect.bisect_right(minutes, minute)
        minutes.insert(j, minute)
        keys.insert(j, key)
        held.setdefault(key, set()).add(position)
        out[i] = key
    return out


def _nearest_free(minutes: list[float], keys: list[int], held: dict[int, set[Hashable]], minute: float,
                  position: Hashable, gap: float) -> int | None:
    """The read of the nearest image within ``gap`` whose read does not hold ``position``:
    a walk outward from ``minute``, nearest first, that usually stops at the first neighbour."""
    right = bisect.bisect_left(minutes, minute)
    left = right - 1
    while True:
        dl = minute - minutes[left] if left >= 0 else float("inf")
        dr = minutes[right] - minute if right < len(minutes) else float("inf")
        if min(dl, dr) > gap:
            return None
        j = left if dl <= dr else right
        if position not in held[keys[j]]:
            return keys[j]
        if j == left:
            left -= 1
        else:
            right += 1
