"""Vendor file-name profiles, as data.

Each profile is a set of regular expressions with named groups plus the index conventions
of that vendor. The regexes are those of the project's microscope reference (tested there
against real names); the conventions say how to turn the vendor's tokens into canonical
ones: well A01, field/z/timepoint 1-based.

Group names understood by ``filenames.parse_path``: plate, row (letters or digits, see
``numeric_rows``), col, well (e.g. B2), well_idx (sequential, needs the plate format),
field/site/pos/xy (or fx and fy, a place in the well's grid), channel (or channel2, channel3:
other forms of it in one regex), z, t/timepoint, acq (the acquisition a scan index counts in)
and timeline, elapsed tokens (days/hours/minutes, elapsed_ms), wall-clock tokens (year, month,
day, hh, mm; or yymm, dd, hhmm for Incucyte archives).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Pattern:
    regex: re.Pattern[str]
    target: str = "name"  # "name": the basename; "path": the relative path with '/' separators
    #: groups whose vendor index starts at 0 (shifted to 1-based)
    zero_based: frozenset[str] = frozenset()
    numeric_rows: bool = False
    #: a match means the file is one to skip (thumbnails): kind "ignore"
    ignore: bool = False
    #: tokens implied when the name leaves them out (ImageXpress omits _s for one site)
    defaults: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    patterns: tuple[Pattern, ...]
    #: folder-path regexes that add tokens (ImageXpress TimePoint_n / ZStep_n)
    path_tokens: tuple[Pattern, ...] = ()
    #: basenames (regex) that are this vendor's acquisition metadata, not images
    sidecars: tuple[re.Pattern[str], ...] = ()
    #: folder names this vendor writes that hold no plate images (autofocus, evaluations)
    ignored_dirs: tuple[str, ...] = ()


def _p(regex: str, **kw) -> Pattern:
    zb = kw.pop("zero_based", ())
    return Pattern(re.compile(regex), zero_based=frozenset(zb), **kw)


def _s(*regexes: str) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(r, re.IGNORECASE) for r in regexes)


GUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"

BUILTIN: tuple[Profile, ...] = (
    Profile(
        "yokogawa", "Yokogawa CellVoyager CV7000/CV8000 (and CQ1 well-index names)",
        (
            _p(r"^(?P<plate>.+)_(?P<row>[A-Z]{1,2})(?P<col>\d{2})_T(?P<t>\d{4})F(?P<field>\d{3})L(?P<timeline>\d{2})"
               r"A(?P<action>\d{2})Z(?P<z>\d{2})C(?P<channel>\d{2})\.(?:tif|png)$"),
            _p(r"^W(?P<well_idx>\d{4})F(?P<field>\d{4})T(?P<t>\d{4})Z(?P<z>\d{3})C(?P<channel>\d)\.tif$"),
        ),
        # a measurement's folder is stamped when it starts (<name>_<yyyymmdd>_<hhmmss>, the real
        # CV8000 output); each measurement counts its time points (T) from 1
        path_tokens=(_p(r"(?:^|/)(?P<acq>[^/]*_\d{8}_\d{6})/(?:[^/]+/)?[^/]+$", target="path"),
                     # CQ1 names carry no plate: it is the folder they are written into
                     _p(r"(?:^|/)(?P<plate>[^/]+)/W\d{4}F\d{4}T\d{4}Z\d{3}C\d\.tif$", target="path")),
        sidecars=_s(r"\.mlf$", r"\.mrf$", r"\.mes$", r"\.wpi$", r"\.wpp$", r"^(?:DC|SC)_.*\.tif$",
                    r"_parameter\.xml$", r"^TRACE.*\.log$"),
    ),
    Profile(
        "harmony", "PerkinElmer/Revvity Harmony export (Operetta, Opera Phenix)",
        (
            _p(r"^r(?P<row>\d{2})c(?P<col>\d{2})f(?P<field>\d{2,3})p(?P<z>\d{2})-ch(?P<channel>\d+)"
               r"sk(?P<t>\d+)fk(?P<fk>\d+)fl(?P<fl>\d+)\.tiff?$", numeric_rows=True),
        ),
        # The plate barcode is the measurement folder's prefix: <barcode>__<date>-Measurement N/Images/;
        # each measurement counts its time points (sk) from 1: a plate read daily is one
        # measurement a day, so the folder is the acquisition the scan index belongs to
        path_tokens=(_p(r"(?:^|/)(?P<acq>(?P<plate>[^/]+?)__\d{4}-\d{2}-\d{2}T[^/]*-Measurement \d+)/Images/[^/]+$",
                        target="path"),),
        sidecars=_s(r"^Index(?:\.idx)?\.xml$", r"^indexfile\.txt$"),
        ignored_dirs=("Evaluation",),
    ),
    Profile(
        "incucyte", "Sartorius Incucyte: exported images (elapsed or wall-clock stamp) and raw archives",
        (
            _p(r"ScanData/(?P<yymm>\d{4})/(?P<dd>\d{2})/(?P<hhmm>\d{4})/(?P<plate>\d+)/"
               r"(?P<row>[A-P])(?P<col>\d{1,2})-(?P<field>\d+)-(?P<channel>[^./]+)\.tif$", target="path"),
            _p(r"^(?P<plate>.+?)_(?:(?P<channel>[A-Za-z]+)_)?(?P<row>[A-P])(?P<col>\d{1,2})_(?P<field>\d+)_"
               r"(?:(?P<days>\d{2,})d(?P<hours>\d{2})h(?P<minutes>\d{2})m|(?P<year>\d{4})y(?P<month>\d{2})m"
               r"(?P<day>\d{2})d_(?P<hh>\d{2})h(?P<mm>\d{2})m)(?:_(?P<crop>\d+))?\.tiff?$"),
        ),
        sidecars=_s(r"^Diag\.zip$", r"\.icarch$", r"\.plateMap$"),
    ),
    Profile(
        "cellomics", "Thermo CellInsight / ArrayScan (HCS Studio)",
        (
            _p(r"^(?P<plate>.+)_(?P<row>[A-P])(?P<col>\d{2})f(?P<field>\d{2,})d(?P<channel>\d)"
               r"\.(?:C01|c01|DIB|dib|tiff?|TIF)$", zero_based=("field",)),
        ),
    ),
    Profile(
        "cytation", "Agilent BioTek Cytation / Gen5",
        (
            _p(r"^(?P<row>[A-P])(?P<col>\d{1,2})_(?P<step>\d{2})_(?P<n1>\d+)_(?P<field>\d+)_(?P<channel>[^_]+)"
               r"_(?P<t>\d{3})\.tiff?$"),
            _p(r"^(?P<row>[A-P])(?P<col>\d{1,2})_(?P<step>\d{2})_(?:SP(?P<field>\d+))?(?:Z(?P<z>\d+))?_C(?P<chidx>\d+)"
               r"_(?P<channel>[^_]+)_T(?P<t>\d+)\.tiff?$"),
        ),
    ),
    Profile(
        "imagexpress", "Molecular Devices ImageXpress / MetaXpress (classic and HCS.ai)",
        (
            _p(rf"^(?P<plate>.+)_(?P<row>[A-Z]{{1,2}})(?P<col>\d{{2}})(?:_s(?P<field>\d+))?(?:_w(?P<channel>\d))?"
               rf"(?:_z(?P<z>\d+))?_thumb(?:{GUID})?\.(?:tiff?|TIFF?|png)$", ignore=True),
            _p(r"^(?P<plate>.+)_t(?P<t>\d+)_(?P<row>[A-Z]{1,2})(?P<col>\d{2})_s(?P<field>\d+)_w(?P<channel>\d+)"
               r"_z(?P<z>\d+)\.tiff?$", zero_based=("t", "field", "z")),
            _p(rf"^(?:(?P<plate>.+)_)?(?P<row>[A-Z]{{1,2}})(?P<col>\d{{2}})(?:_s(?P<field>\d+))?(?:_w(?P<channel>\d))?"
               rf"(?:_z(?P<z>\d+))?(?:{GUID})?\.(?:tiff?|TIFF?|png)$", defaults=(("field", "1"),)),
        ),
        path_tokens=(
            _p(r"(?:^|/)TimePoint_(?P<t>\d+)(?:/ZStep_\d+)?/[^/]+$", target="path"),
            # an acquisition of one time point writes no TimePoint_n folder (the real Projection-Mix
            # output): its acquisition folder is the scan, numbered by MetaXpress in the order taken
            _p(r"(?:^|/)\d{4}-\d{2}-\d{2}/(?P<t>\d+)/(?:ZStep_\d+/)?[^/]+$", target="path"),
            _p(r"(?:^|/)ZStep_(?P<z>\d+)/[^/]+$", target="path"),
            # each acquisition of a time-lapse journal counts its TimePoint_n from 1
            _p(r"(?:^|/)(?P<acq>\d{4}-\d{2}-\d{2}/\d+)/TimePoint_\d+/(?:ZStep_\d+/)?[^/]+$", target="path"),
            # The plate folder sits above TimePoint_n (exported) or above <date>/<acq>/ (native);
            # exports of several plates share the name token, so the folder is the better id.
            _p(r"(?:^|/)(?P<plate>[^/]+)/(?:\d{4}-\d{2}-\d{2}/\d+/)?(?:TimePoint_\d+/)(?:ZStep_\d+/)?[^/]+$",
               target="path"),
            _p(r"(?:^|/)(?P<plate>[^/]+)/\d{4}-\d{2}-\d{2}/\d+/(?:ZStep_\d+/)?[^/]+$", target="path"),
        ),
        sidecars=_s(r"\.HTD$", r"\.jdce$", r"\.mxprotocol$", r"^image_metadata_\d+\.csv$"),
        ignored_dirs=("autofocus",),
    ),
    Profile(
        "micromanager", "Micro-Manager multi-dimensional acquisition (stacks and separate files)",
        (
            _p(r"(?P<row>[A-Z]{1,2})(?P<col>\d{1,2})-Site_(?P<field>\d+)/img_channel(?P<channel>\d+)_position\d+"
               r"_time(?P<t>\d+)_z(?P<z>\d+)\.tif$", target="path", zero_based=("field", "t", "z")),
            _p(r"_MMStack_(?P<row>[A-Z]{1,2})(?P<col>\d{1,2})-Site_(?P<field>\d+)(?:_\d+)?\.ome\.tif$",
               zero_based=("field",)),
        ),
        # Micro-Manager writes each acquisition into <name>_<n>/ (n counting up when the name is
        # used again) and counts its time points from 0 in each: the folder is the acquisition
        path_tokens=(_p(r"(?:^|/)(?P<acq>(?![A-Z]{1,2}\d{1,2}-Site_\d+/)[^/]+_\d+)/(?:[A-Z]{1,2}\d{1,2}-Site_\d+/)?"
                        r"[^/]+$", target="path"),),
        sidecars=_s(r"^NDTiff\.index$", r"^metadata\.txt$", r"^display_and_comments\.txt$"),
    ),
    Profile(
        "nikon", "Nikon NIS-Elements: ND2 (JOBS / well-plate acquisitions; positions named by well are read "
                 "from the file) and TIFF exports named by well",
        (
            _p(r"Wells?(?P<row>[A-Z]{1,2})(?P<col>\d{1,2})(?=[_.\-c])[^/]*\.nd2$", defaults=(("field", "1"),)),
            # TIFF exports: the user chooses which tokens the name carries and in what order
            # (JOBS: <start>__WellI02_PointI02_0002_ChannelFar Red_Seq8699; ND export:
            # ..._WellsD8_Points01c5, WellB03_t005xy2z3c1; Well-J18-z1-CONC.ome.tiff), so each
            # token is looked for on its own; a JOBS run's start stamp is its time
            _p(r"^(?=.*?(?<![A-Za-z])Wells?-?(?P<row>[A-Z]{1,2})0?(?P<col>\d{1,2})(?![0-9]))"
               r"(?=(?:.*?(?<![A-Za-z])xy(?P<xy>\d+))?)"
               r"(?=(?:.*?(?<![A-Za-z])Points(?P<pos>\d+))?)"
               r"(?=(?:.*?(?<![A-Za-z])Point[A-Z]{1,2}\d{1,2}_(?P<site>\d+))?)"
               r"(?=(?:.*?(?<![A-Za-z])t(?P<t>\d+)(?=[xyzc_.\-]))?)"
               r"(?=(?:.*?(?<![A-Za-z])z(?P<z>\d+)(?=[c_.\-]))?)"
               r"(?=(?:.*?(?<![A-Za-z])c(?P<channel>\d+)\.)?)"
               r"(?=(?:.*?_Channel(?P<channel2>[^_,]+)_)?)"
               r"(?=(?:.*?-z\d+-(?P<channel3>[^.]+)\.)?)"
               r"(?=(?:(?P<year>\d{4})(?P<month>\d{2})(?P<day>\d{2})_(?P<hh>\d{2})(?P<mm>\d{2})\d{2}_\d{3}_)?)"
               r".*\.(?:ome\.)?(?:tiff?|TIFF?)$", zero_based=("pos",)),
        ),
    ),
    Profile(
        "incell", "GE/Cytiva IN Cell Analyzer",
        # <row> - <col>(fld F[ wv EX - EM][ z Z][- time T - MS ms]).tif: the column is written
        # with or without its leading zero, single-channel runs leave out the wave, and a
        # time-lapse run adds its time point and the milliseconds since the run began
        (_p(r"^(?P<row>[A-Z]{1,2}) - (?P<col>\d{1,2})\(fld (?P<field>\d+)(?: wv (?P<channel>[^()]+?))?"
            r"(?: z (?P<z>\d+))?(?:\s*-\s*time (?P<t>\d+) - (?P<elapsed_ms>\d+) ms)?\)\.tiff?$"),),
        sidecars=_s(r"\.xdce$"),
    ),
    Profile(
        "scanr", "Olympus/Evident scanR",
        (
            _p(r"^(?:(?P<well>[A-Z]{1,2}\d{1,2})--)?W(?P<well_idx>\d{5})--P(?P<field>\d{5})(?:--Z(?P<z>\d{5}))?"
               r"(?:--T(?P<t>\d{5}))?--(?P<channel>.+)\.tiff?$", zero_based=("z", "t")),
        ),
        sidecars=_s(r"^metadata\.ome\.xml$", r"^experiment_descriptor\.dat$"),
    ),
    Profile(
        "leica", "Leica LAS AF/X Matrix Screener",
        (
            _p(r"--U(?P<col>\d{2})--V(?P<row>\d{2})--J(?P<job>\d{2})--E(?P<e>\d{2})--O(?P<o>\d{2})--X(?P<fx>\d{2})"
               r"--Y(?P<fy>\d{2})--T(?P<t>\d{4})--Z(?P<z>\d{2})--C(?P<channel>\d{2})\.ome\.tif$",
               numeric_rows=True, zero_based=("row", "col", "t", "z")),
        ),
        ignored_dirs=("AdditionalData",),
    ),
)

BY_NAME: dict[str, Profile] = {p.name: p for p in BUILTIN}


@dataclass(frozen=True)
class CustomProfileSpec:
    """A lab's own naming scheme, from the config's ``[[custom_profiles]]``."""

    name: str
    regex: str
    target: str = "name"
    index_base: int = 1
    sidecars: tuple[str, ...] = field(default_factory=tuple)


def custom_profile(spec: CustomProfileSpec) -> Profile:
    try:
        rx = re.compile(spec.regex)
    except re.error as exc:
        raise ValueError(f"custom profile {spec.name!r}: bad regular expression: {exc}") from exc
    groups = set(rx.groupindex)
    if not ({"well"} <= groups or {"row", "col"} <= groups or "well_idx" in groups):
        raise ValueError(f"custom profile {spec.name!r}: the regex needs named groups 'well' or 'row'+'col'")
    if spec.index_base not in (0, 1):
        raise ValueError(f"custom profile {spec.name!r}: index_base must be 0 or 1")
    zb = frozenset({"field", "site", "z", "t", "timepoint"}) if spec.index_base == 0 else frozenset()
    numeric = "row" in groups and bool(re.search(r"\(\?P<row>\\d", spec.regex))
    return Profile(spec.name, "custom profile from the configuration",
                   (Pattern(rx, target=spec.target, zero_based=zb, numeric_rows=numeric),),
                   sidecars=_s(*spec.sidecars))
