"""Frozen dataclasses shared by every layer.

They are the only shapes that cross module boundaries: SQLAlchemy rows stay inside
``store/``, Qt objects inside ``gui/`` and torch tensors inside ``training/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

MULTICLASS: tuple[str, ...] = ("neuron", "astrocyte", "oligodendrocyte", "undifferentiated")
BINARY: tuple[str, ...] = ("neuron", "glia")
GLIA = ("astrocyte", "oligodendrocyte")

ParseKind = Literal["image", "ignore", "sidecar", "error"]


def well_name(row: int, col: int) -> str:
    """0-based row/col -> canonical name (A01, P24, AF48), 1536-ready."""
    if row < 26:
        letters = chr(ord("A") + row)
    else:
        letters = chr(ord("A") + row // 26 - 1) + chr(ord("A") + row % 26)
    return f"{letters}{col + 1:02d}"


def parse_well(name: str) -> tuple[int, int]:
    """Canonical or unpadded well name -> 0-based (row, col). Raises ValueError."""
    name = name.strip().upper()
    i = 0
    while i < len(name) and name[i].isalpha():
        i += 1
    letters, digits = name[:i], name[i:]
    if not letters or not digits.isdigit() or len(letters) > 2:
        raise ValueError(f"not a well name: {name!r}")
    if len(letters) == 1:
        row = ord(letters) - ord("A")
    else:
        row = (ord(letters[0]) - ord("A") + 1) * 26 + (ord(letters[1]) - ord("A"))
    col = int(digits) - 1
    if col < 0:
        raise ValueError(f"not a well name: {name!r}")
    return row, col


PLATE_SHAPES: dict[int, tuple[int, int]] = {
    6: (2, 3), 12: (3, 4), 24: (4, 6), 48: (6, 8), 96: (8, 12), 384: (16, 24), 1536: (32, 48),
}


@dataclass(frozen=True)
class ImageKey:
    """Where an image sits on a plate and in time. Indices are canonical: field, z and
    timepoint are 1-based whatever the vendor uses; row/col are 0-based."""

    plate: str | None
    well: str
    row: int
    col: int
    field: int | None = None
    channel: str | None = None
    z: int | None = None
    timepoint: int | None = None
    elapsed_h: float | None = None
    acquired_at: datetime | None = None
    #: the acquisition (measurement) the scan index counts in, where the vendor restarts it for
    #: each: a Harmony measurement folder, a CellVoyager measurement, a MetaXpress acquisition
    acquisition: str | None = None


@dataclass(frozen=True)
class ParseResult:
    path: str
    kind: ParseKind
    profile: str | None = None
    key: ImageKey | None = None
    reason: str | None = None


#: how the reason of a frame that failed QC for its focus begins (``scoring.qc.focus_check``)
OUT_OF_FOCUS = "out of focus"


def qc_kind(reason: str) -> str:
    """The kind of a QC reason, without the frame's own figures: tables that count failures
    (the HTML report's) would otherwise give every out-of-focus or saturated frame a row of
    its own."""
    if "pixels are NaN or infinite" in reason:
        return "NaN or infinite pixels"
    return reason.split(" (", 1)[0]


@dataclass(frozen=True)
class QCMetrics:
    focus: float
    saturation: float
    blank: bool
    dtype: str
    min: float
    max: float
    p_low: float
    p_high: float
    passed: bool
    reason: str | None = None
    nonfinite: int = 0  # NaN/inf pixels of a float frame: such a frame fails QC and is not scored
    #: fine detail over detail at cell-edge scale (``scoring.qc``); 0.0: not measured (blank frame)
    sharpness: float = 0.0
    #: sharpness over the median of the same field's nearest frames; None: nothing to compare with
    focus_ratio: float | None = None


@dataclass(frozen=True)
class WellReadout:
    experiment: str
    plate: str
    well: str
    row: int
    col: int
    condition: str | None
    timepoint: int
    elapsed_h: float | None
    acquired_at: datetime | None
    model_version: str
    classes: tuple[str, ...]
    prob_mean: tuple[float, ...]
    prob_sd: tuple[float, ...]
    fraction: tuple[float, ...]
    n_images: int
    n_tiles: int
    n_qc_failed: int
    confidence: float
    #: images flagged out of distribution; None: the model gives no flag
    n_ood: int | None = None
    #: on a plate whose scans count within acquisitions (a Harmony measurement, an ND2 or CZI
    #: file of the plate): which acquisition (1-based) and which scan within it the time key
    #: ``timepoint`` stands for; None elsewhere
    acquisition: int | None = None
    scan: int | None = None


@dataclass(frozen=True)
class ImageRecord:
    id: int
    experiment: str
    path: str
    status: str
    error: str | None
    plate: str | None
    well: str | None
    field: int | None
    channel: str | None
    z: int | None
    timepoint: int | None
    elapsed_h: float | None
    acquired_at: datetime | None
    size: int
    mtime: float
    content_hash: str | None
    qc: dict = field(default_factory=dict)
    attempts: int = 0
    rewritten: bool = False
