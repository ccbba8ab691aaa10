"""Which channels (and z planes) a watch folder's file names carry, each channel with the name
its files state, whether the folder's ``channel`` and ``z`` settings score one of them, and
whether the names give a time the readouts can be keyed by: told by ``doctor`` and at the start
of ``nscmonitor run``.

Why: names and settings speak different languages. An ImageXpress name carries the
wavelength's number (``_w2``) while its TIFF, and the biologist, call it "FITC"; a setting of
``channel = "FITC"`` then skips every image, and no setting at all averages every wavelength
into the same readouts. ``status`` warns of both once images have been scored; this says it
before the first image, with the number to set.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nscmonitor.config import CustomProfileSpec, WatchFolder
from nscmonitor.core.scans import time_source
from nscmonitor.core.selection import Z_ALL, norm_channel, z_skip
from nscmonitor.intake.filenames import parse_path
from nscmonitor.intake.folder import folder_profile
from nscmonitor.readers import formats
from nscmonitor.readers.decode import stated_channel_name

log = logging.getLogger("nscmonitor.intake")

#: directory entries looked through (a network share can hold millions)
SURVEY_ENTRIES = 2000
#: distinct channels listed at most
MAX_CHANNELS = 12


@dataclass(frozen=True)
class ChannelSurvey:
    setting: str | None
    #: (the channel as the names carry it, the name its files state or None), in name order
    channels: tuple[tuple[str, str | None], ...]
    #: the folder's ``z`` setting, the z planes the names give, and whether some image gives none
    z: str = Z_ALL
    planes: tuple[int, ...] = ()
    unplaned: bool = False
    #: how the sampled names give time: a scan index or the time since the first scan
    #: (``indexed``), a wall-clock stamp (``stamped``), nothing (``clocked``: the file's mtime);
    #: and whether the folder has an ``induction_time``, which the last two need for hours
    indexed: int = 0
    stamped: int = 0
    clocked: int = 0
    induction: bool = False

    @property
    def untimed(self) -> bool:
        """Names that give no scan index and no elapsed time, in a folder without an induction
        time: their images are scored but have no time, so they give no readout."""
        return not self.induction and (self.stamped + self.clocked) > 0

    def time_note(self) -> str:
        if not (self.indexed or self.stamped or self.clocked):
            return ""
        if self.untimed:
            what = ("a wall-clock time only" if self.clocked == 0
                    else "no time (no scan index, no time stamp)")
            return (f"{self.stamped + self.clocked} of the names looked at give {what}, and the folder has no "
                    "induction_time: their images are scored but give no readout; set induction_time (when "
                    "differentiation was induced) for hours since induction")
        if self.clocked:
            return (f"{self.clocked} of the names looked at give no time: each image is timed by its file's "
                    "modification time (keep file times when copying) and grouped into plate reads")
        return "time from the names" + (" and the folder's induction_time" if self.stamped else "")

    @property
    def z_mixed(self) -> bool:
        """``z = all`` and the names give several planes (or planes beside projections): all
        averaged into the same readouts."""
        return self.z == Z_ALL and len(self.planes) + self.unplaned > 1

    @property
    def z_mismatch(self) -> bool:
        """The ``z`` setting scores none of the images the names describe."""
        if self.z == Z_ALL or not (self.planes or self.unplaned):
            return False
        return all(z_skip(self.z, p) for p in self.planes) and (not self.unplaned or z_skip(self.z, None) is not None)

    def z_note(self) -> str:
        if not self.planes:
            return (f"no z plane: the setting z = {self.z!r} matches none of them, so every image is skipped"
                    if self.z_mismatch else "")
        span = (f"{self.planes[0]}-{self.planes[-1]}" if len(self.planes) > 2 else
                " and ".join(str(p) for p in self.planes))
        head = f"z plane{'s' if len(self.planes) > 1 else ''} {span}" + (
            " beside images without one (projections)" if self.unplaned else "")
        if self.z_mixed:
            return (f"{head}: every plane is scored into the same readouts: set z = \"projection\" or the plane "
                    "to score")
        if self.z_mismatch:
            return f"{head}: the setting z = {self.z!r} matches none of them, so every image is skipped"
        return f"{head}; scored: {'every plane' if self.z == Z_ALL else self.z}"

    @property
    def scored(self) -> tuple[str, str | None] | None:
        """The channel the setting scores, when the names carry it."""
        if self.setting is None:
            return None
        return next((c for c in self.channels if norm_channel(c[0]) == norm_channel(self.setting)), None)

    @property
    def channel_mismatch(self) -> bool:
        """The setting matches none of the channels the names carry: every image is skipped."""
        return self.setting is not None and bool(self.channels) and self.scored is None

    @property
    def mismatch(self) -> bool:
        return self.channel_mismatch or self.z_mismatch

    @property
    def mixed(self) -> bool:
        """No setting, and the names carry several channels (or z planes): all are averaged
        into the same readouts."""
        return (self.setting is None and len(self.channels) > 1) or self.z_mixed

    def note(self) -> str:
        z = self.z_note()
        return self.channel_note() + (f"; its names give {z}" if z else "")

    def channel_note(self) -> str:
        if not self.channels:
            return ("its file names carry no channel" + (f" (channel {self.setting} is read inside stacks and "
                                                        "containers)" if self.setting else ""))
        listed = ", ".join(_shown(c) for c in self.channels)
        head = f"its file names carry channel{'s' if len(self.channels) > 1 else ''} {listed}"
        if self.setting is None and len(self.channels) > 1:
            return (f"{head}; every channel is scored into the same readouts: set channel to the label-free one "
                    "the model was trained on")
        if self.setting is None:
            return f"{head}; scored: every channel"
        if not self.channel_mismatch:
            return f"{head}; scored: {_shown(self.scored)}"
        by_name = next((c for c in self.channels if c[1] and norm_channel(c[1]) == norm_channel(self.setting)), None)
        advice = (f'set channel = "{by_name[0]}" (the names give {self.setting} as {by_name[0]})' if by_name
                  else "set channel to one of them as the names give it")
        return (f"{head}; the setting channel = {self.setting!r} matches none of them, so every image is "
                f"skipped: {advice}")


#: stacks and containers opened per survey to learn whether they hold time series; the rest of
#: the folder's are taken to be like them (opening 2,000 ND2 files would hold up a daemon's start)
TIME_SERIES_OPENED = 10


def _time_series(path: Path, opened: list[bool]) -> bool:
    """A file whose time points are images of their own, each keyed by its index (an OME-TIFF,
    ND2 or CZI time-lapse). ``opened``: what the survey's earlier opens found; past
    ``TIME_SERIES_OPENED`` of them the answer is theirs (the majority) without opening."""
    if not formats.is_ome_tiff(str(path)) and path.suffix.lower() not in formats.FORMATS:
        return False
    if len(opened) >= TIME_SERIES_OPENED:
        return sum(opened) * 2 > len(opened)
    try:
        found = formats.units(str(path)) or ()
    except formats.NotReady:
        return False
    opened.append(any(u.timepoint is not None or (u.key is not None and u.key.timepoint is not None) for u in found))
    return opened[-1]


def _shown(c: tuple[str, str | None]) -> str:
    token, name = c
    return f"{token} ({name})" if name and norm_channel(name) != norm_channel(token) else token


def survey(cfg: WatchFolder, custom: Sequence[CustomProfileSpec] = (), *,
           limit: int = SURVEY_ENTRIES) -> ChannelSurvey:
    """The channels of the first ``limit`` directory entries' image names (one sample file each,
    whose stated name is read from its header). A folder that cannot be read gives none."""
    profile = folder_profile(cfg, custom)
    root = Path(cfg.path)
    found: dict[str, tuple[str, Path]] = {}
    planes: set[int] = set()
    unplaned = False
    timing = {"indexed": 0, "stamped": 0, "clocked": 0}
    opened: list[bool] = []
    seen = 0
    try:
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in sorted(files):
                seen += 1
                if f.startswith("."):
                    continue
                path = Path(folder) / f
                res = parse_path(path.relative_to(root).as_posix(), profile, plate_format=cfg.plate_format)
                key = res.key if res.kind == "image" else None
                if key is not None and key.channel is not None:
                    found.setdefault(norm_channel(key.channel), (key.channel, path))
                if key is not None and key.z is not None:
                    planes.add(key.z)
                elif key is not None:
                    unplaned = True
                if key is not None:
                    source = time_source(key)
                    if source != "index" and _time_series(path, opened):  # opened only when the name gives none
                        source = "index"
                    timing[{"index": "indexed", "stamp": "stamped", "clock": "clocked"}[source]] += 1
                if seen >= limit or len(found) >= MAX_CHANNELS:
                    break
            seen += len(dirs)
            if seen >= limit or len(found) >= MAX_CHANNELS:
                break
    except OSError as exc:  # a share that went away: what was seen so far is what is told
        log.info("channel survey of %s stopped: %s", root, exc)
    ordered = sorted(found.values(), key=lambda t: (not t[0].isdecimal(), int(t[0]) if t[0].isdecimal() else 0, t[0]))
    return ChannelSurvey(cfg.channel, tuple((token, stated_channel_name(p)) for token, p in ordered), cfg.z,
                         tuple(sorted(planes)), unplaned, induction=cfg.induction_time is not None, **timing)
