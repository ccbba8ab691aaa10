"""File name -> plate position and time. Pure: the daemon, ``nscmonitor parse`` and the
simulator's tests all call ``parse_path``, so there is one truth about names."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime

from nscmonitor.core.domain import PLATE_SHAPES, ImageKey, ParseResult, well_name
from nscmonitor.intake.filters import is_image_name, junk_reason
from nscmonitor.intake.profiles import BUILTIN, BY_NAME, Pattern, Profile


class NameError_(ValueError):
    """A name matched a profile but its tokens make no sense (e.g. column 0)."""


def _norm(relpath: str) -> str:
    return relpath.replace("\\", "/").lstrip("./") if relpath.startswith("./") else relpath.replace("\\", "/")


def _row_index(token: str, numeric: bool) -> int:
    if numeric:
        return int(token) - 1
    token = token.upper()
    if len(token) == 1:
        return ord(token) - ord("A")
    return (ord(token[0]) - ord("A") + 1) * 26 + (ord(token[1]) - ord("A"))


def _int(groups: dict[str, str | None], name: str, zero_based: frozenset[str]) -> int | None:
    v = groups.get(name)
    if v is None or v == "":
        return None
    return int(v) + (1 if name in zero_based else 0)


def _channel(groups: dict[str, str | None]) -> str | None:
    ch = groups.get("channel") or groups.get("channel2") or groups.get("channel3")
    if ch is None:
        return None
    return str(int(ch)) if ch.isdigit() else ch


def _times(g: dict[str, str | None]) -> tuple[float | None, datetime | None]:
    elapsed = None
    if g.get("days") is not None:
        elapsed = int(g["days"]) * 24 + int(g["hours"] or 0) + int(g["minutes"] or 0) / 60.0
    for k, hours in (("elapsed_d", 24.0), ("elapsed_h", 1.0), ("elapsed_m", 1 / 60), ("elapsed_ms", 1 / 3.6e6)):
        if g.get(k):
            elapsed = (elapsed or 0.0) + float(g[k]) * hours
    acquired = None
    if g.get("year"):
        acquired = datetime(int(g["year"]), int(g["month"]), int(g["day"]), int(g["hh"]), int(g["mm"]))
    elif g.get("yymm"):
        yymm, hhmm = g["yymm"], g["hhmm"]
        acquired = datetime(2000 + int(yymm[:2]), int(yymm[2:]), int(g["dd"]), int(hhmm[:2]), int(hhmm[2:]))
    return elapsed, acquired


def _key(g: dict[str, str | None], pat: Pattern, plate_format: int | None) -> ImageKey:
    zb = pat.zero_based
    if g.get("well"):
        m = re.fullmatch(r"([A-Za-z]{1,2})(\d{1,2})", g["well"])
        if not m:
            raise NameError_(f"well token {g['well']!r} is not a well name")
        row, col = _row_index(m.group(1), False), int(m.group(2)) - 1
    elif g.get("row") is not None and g.get("col") is not None:
        row = _row_index(g["row"], pat.numeric_rows) + (1 if "row" in zb else 0)
        col = int(g["col"]) - 1 + (1 if "col" in zb else 0)
    elif g.get("well_idx"):
        if not plate_format or plate_format not in PLATE_SHAPES:
            raise NameError_("the name gives a sequential well number; set the plate format to place it")
        rows, cols = PLATE_SHAPES[plate_format]
        idx = int(g["well_idx"]) - 1
        if not 0 <= idx < rows * cols:
            raise NameError_(f"well number {idx + 1} is outside a {plate_format}-well plate")
        row, col = divmod(idx, cols)
    else:
        raise NameError_("the name carries no well")
    if row < 0 or col < 0:
        raise NameError_("row or column index below 1")
    if plate_format in PLATE_SHAPES:
        rows, cols = PLATE_SHAPES[plate_format]
        if row >= rows or col >= cols:
            raise NameError_(f"well {well_name(row, col)} is outside a {plate_format}-well plate")
    field = (_int(g, "field", zb) or _int(g, "site", zb) or _int(g, "pos", zb) or _int(g, "xy", zb)
             or _grid_field(g))
    t = _int(g, "t", zb) or _int(g, "timepoint", zb)
    elapsed, acquired = _times(g)
    return ImageKey(
        plate=g.get("plate") or None, well=well_name(row, col), row=row, col=col, field=field,
        channel=_channel(g), z=_int(g, "z", zb), timepoint=t, elapsed_h=elapsed, acquired_at=acquired,
        acquisition=_acquisition(g),
    )


def _grid_field(g: dict[str, str | None]) -> int | None:
    """A field given as its place in the well's grid (Leica's 0-based ``X``/``Y``): numbered
    row by row, 100 to a row, so every field of a well has its own number."""
    if g.get("fx") is None or g.get("fy") is None:
        return None
    return int(g["fy"]) * 100 + int(g["fx"]) + 1


def _acquisition(g: dict[str, str | None]) -> str | None:
    """The acquisition a scan index counts in: the folder the profile names, and a
    CellVoyager timeline within it (each timeline of a measurement counts its T from 1)."""
    acq = g.get("acq") or None
    if g.get("timeline"):
        acq = f"{acq or ''} timeline {int(g['timeline'])}".strip()
    return acq


def _match(profile: Profile, relpath: str, name: str) -> tuple[Pattern, dict[str, str | None]] | None:
    for pat in profile.patterns:
        m = pat.regex.search(relpath if pat.target == "path" else name)
        if m:
            return pat, m.groupdict()
    return None


def _with_path_tokens(profile: Profile, relpath: str, g: dict[str, str | None]) -> dict[str, str | None]:
    for pt in profile.path_tokens:
        m = pt.regex.search(relpath)
        if m:
            for k, v in m.groupdict().items():
                if v is not None and (g.get(k) is None or k == "plate"):
                    g[k] = v
    return g


def _sidecar(profiles: Iterable[Profile], name: str) -> Profile | None:
    for p in profiles:
        if any(rx.search(name) for rx in p.sidecars):
            return p
    return None


def parse_path(relpath: str, profile: str | Profile = "auto", *, plate_format: int | None = None,
               profiles: Sequence[Profile] = BUILTIN) -> ParseResult:
    """Classify one path relative to the watched folder: image (with its key), ignore,
    sidecar, or error (an image we cannot place: recorded, never dropped)."""
    relpath = _norm(relpath)
    name = relpath.rsplit("/", 1)[-1]
    reason = junk_reason(relpath)
    if reason:
        return ParseResult(relpath, "ignore", None, None, reason)
    if isinstance(profile, Profile):
        candidates: Sequence[Profile] = (profile,)
    elif profile == "auto":
        candidates = profiles
    else:
        prof = BY_NAME.get(profile) or next((p for p in profiles if p.name == profile), None)
        if prof is None:
            raise ValueError(f"unknown profile {profile!r}; known: {', '.join(p.name for p in profiles)}")
        candidates = (prof,)
    dirs = relpath.split("/")[:-1]
    for prof in candidates:
        if any(d.startswith(ignored) for d in dirs for ignored in prof.ignored_dirs):
            return ParseResult(relpath, "ignore", prof.name, None, f"{prof.name} folder that holds no plate images")
    side = _sidecar(candidates if profile != "auto" else profiles, name)
    if side is not None:
        return ParseResult(relpath, "sidecar", side.name, None, None)
    if not is_image_name(name):
        return ParseResult(relpath, "ignore", None, None, "not an image file type")
    for prof in candidates:
        hit = _match(prof, relpath, name)
        if hit is None:
            continue
        pat, groups = hit
        groups = {**dict(pat.defaults), **{k: v for k, v in groups.items() if v is not None}}
        if pat.ignore:
            return ParseResult(relpath, "ignore", prof.name, None, "thumbnail")
        try:
            key = _key(_with_path_tokens(prof, relpath, groups), pat, plate_format)
        except (NameError_, ValueError) as exc:
            return ParseResult(relpath, "error", prof.name, None, f"{prof.name} name, but {exc}")
        return ParseResult(relpath, "image", prof.name, key, None)
    tried = "profile " + candidates[0].name if len(candidates) == 1 else "any known profile"
    return ParseResult(relpath, "error", None, None,
                       f"image name does not match {tried}; set the folder's profile or define a custom one")


def detect_profile(relpaths: Iterable[str], profiles: Sequence[Profile] = BUILTIN) -> str | None:
    """The profile that places most of a folder's first images (None if none does).

    Why per folder and not per file: a generic pattern (ImageXpress's) can match a stray
    file of another instrument; voting over the folder keeps one convention per folder."""
    votes: Counter[str] = Counter()
    for rp in relpaths:
        r = parse_path(rp, "auto", profiles=profiles)
        if r.kind in ("image", "sidecar") and r.profile:
            votes[r.profile] += 1
    return votes.most_common(1)[0][0] if votes else None
