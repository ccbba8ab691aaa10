"""What intake knows about a ready image before it enters the queue: its place (from the
name, or from the container's or OME-Zarr plate's metadata), the channel rule, the
elapsed-time rule, the plate map's condition, and why it is quarantined or skipped.
Pure functions of the folder's settings and the ready file."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

from nscmonitor.core.scans import time_source
from nscmonitor.core.selection import skip_reason
from nscmonitor.core.domain import ImageKey, ParseResult
from nscmonitor.intake.filenames import parse_path
from nscmonitor.intake.folder import WatchedFolder
from nscmonitor.readers import formats
from nscmonitor.store.writer import Discovered

LINK_SKIP = "symbolic link: not followed (a target inside a watched folder is scored under its own path)"


def parse(folder: WatchedFolder, path: str, unit: formats.Unit | None) -> ParseResult:
    """The file's name parsed by the folder's profile; a container unit or OME-Zarr field
    that its metadata placed (or refused) wins over the name. Raises ValueError for a
    profile that cannot parse at all."""
    res = parse_path(folder.rel(formats.split_ref(path)[0]), folder.profile, plate_format=folder.cfg.plate_format)
    return place(res, folder.rel(path), unit)


def place(res: ParseResult, rel: str, unit: formats.Unit | None) -> ParseResult:
    """An image inside a file (``rel``: its reference below the folder), from its file name's
    parse ``res`` and the ``unit`` the file's metadata describes: a unit the metadata placed
    (or refused) wins over the name; a time point or position of a file placed by its name has
    the name's place and the file's time and field; a file whose name gives no time is dated by
    the file's own record of when it was taken, where it has one. ``nscmonitor parse
    --contents`` shows the same."""
    if unit is not None and (unit.key is not None or unit.error is not None):
        return ParseResult(rel, "error" if unit.error else "image", unit.profile, unit.key, unit.error)
    if unit is not None and res.key is not None and (unit.timepoint is not None or unit.position is not None
                                                     or unit.acquired_at is not None):
        key = res.key
        if unit.timepoint is not None:
            key = replace(key, timepoint=unit.timepoint, elapsed_h=unit.elapsed_h, acquired_at=unit.acquired_at)
        elif unit.acquired_at is not None and time_source(key) == "clock":
            key = replace(key, acquired_at=unit.acquired_at)  # the file's record, where the name gives no time
        if unit.position is not None:
            key = replace(key, field=subfield(key.field, unit.position, unit.positions))
        return ParseResult(rel, res.kind, res.profile, key, res.reason)
    return res


def subfield(named: int | None, position: int, positions: int) -> int:
    """The field of one of a file's ``positions`` positions that name no well: the name's
    field divided among them (``s2`` with 3 positions: fields 4, 5, 6), or, where the name
    gives none, the position's number. Files named by site each holding several positions
    never share a field."""
    return (named - 1) * positions + position + 1 if named is not None else position + 1


def describe(folder: WatchedFolder, res: ParseResult, path: str, size: int, mtime: float, link: bool) -> Discovered:
    """A parsed image as the queue takes it. A channel other than the folder's ``channel``,
    or a z plane its ``z`` does not score, is skipped with the reason; a symbolic link is
    skipped (never quarantined: the name is not at fault)."""
    cfg = folder.cfg
    key = res.key
    error = res.reason if res.kind == "error" else None
    skip = None
    if key is not None:
        skip = skip_reason(cfg.channel, cfg.z, key.channel, key.z)
    if link:
        error, skip = None, LINK_SKIP
    acquired = key.acquired_at if key is not None else None
    acquired_utc = acquired.astimezone(timezone.utc) if acquired else datetime.fromtimestamp(mtime, timezone.utc)
    elapsed = elapsed_hours(key, acquired_utc, cfg.induction_time)
    if untimed_time_point(path, key):
        acquired_utc, elapsed = None, None
    return Discovered(
        path=path, relpath=folder.rel(path), size=size, mtime=mtime, experiment_id=folder.experiment_id,
        profile=res.profile, key=key, plate=cfg.plate or (key.plate if key else None) or cfg.path.name,
        plate_format=cfg.plate_format, elapsed_h=elapsed, acquired_at=acquired_utc,
        condition=folder.plate_map.condition(key.well) if key else None,
        attributes=folder.plate_map.attributes.get(key.well) if key else None,
        error=error, skip_reason=skip,
    )


def untimed_time_point(path: str, key: ImageKey | None) -> bool:
    """A time point inside a file (``FILE|...t=N``) whose file states no time for it: the
    file's clock is when the last one was written, so every time point would get the same
    hours. It is keyed by its index and given no hours instead."""
    return (key is not None and key.acquired_at is None and key.elapsed_h is None
            and "t" in formats.split_ref(path)[1])


def elapsed_hours(key: ImageKey | None, acquired_utc: datetime, induction: datetime | None) -> float | None:
    """Hours since induction: the name's own elapsed time first (Incucyte ``00d12h00m``),
    else acquisition time minus the folder's ``induction_time``, else unknown."""
    if key is not None and key.elapsed_h is not None:
        return key.elapsed_h
    if induction is not None:
        return (acquired_utc - induction).total_seconds() / 3600.0
    return None
