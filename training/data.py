"""Labelled tiles from three sources behind one record type, hashed (``splits`` assigns train/val/test).

Sources: (a) the simulator's ``tiles.json`` + ``tiles.csv`` export, (b) an ImageFolder tree
``class_name/*.tif``, (c) images from nscmonitor's store joined with an end-point label CSV.
All three become ``TileRecord`` lists; ``load_arrays`` turns them into the exact tiles the
daemon would feed the model: every image is read by the daemon's own reader
(``nscmonitor.readers.decode``: the scored channel of a stack, a scene or position of an
ND2/CZI file, an OME-Zarr field) and cut by its preprocessing
(``nscmonitor.scoring.preprocess``: per-image percentile scaling, resampling, grid tiling,
the empty-tile rule), so training and serving never disagree on the plane or its tiles. This module needs numpy only; torch stays in
``train.py``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from dataclasses import field as dc_field
from pathlib import Path

import numpy as np

from nscmonitor.core.domain import BINARY, GLIA, MULTICLASS
from nscmonitor.core.errors import UserFacingError

SPLITS = ("train", "val", "test")
LABEL_MODES = ("well", "tile", "endpoint")
P_LOW, P_HIGH = 1.0, 99.8
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


class DataError(UserFacingError):
    """The training data cannot be used as given; the message says what to fix."""


@dataclass(frozen=True)
class TileRecord:
    """One image file with its well's fate. ``label`` is the well's end-point class in the
    source's vocabulary (MULTICLASS names); the scheme mapping happens in ``scheme_label``."""

    path: str
    label: str
    experiment: str = ""
    plate: str = ""
    well: str = ""
    field: int | None = None
    timepoint: int | None = None
    elapsed_h: float | None = None
    condition: str = ""
    split: str | None = None
    fractions: dict[str, float] = dc_field(default_factory=dict, compare=False, hash=False)
    #: the well's neuron-vs-glia answer when its fate mixture is known (well label mode):
    #: a mixed well whose 4-class winner is "neuron" can still be glia-majority
    binary: str | None = dc_field(default=None, compare=False, hash=False)
    #: the well's end-point shares per fate (what its stain counted), the target of training
    #: with soft labels; empty where no end-point count is known
    target: dict[str, float] = dc_field(default_factory=dict, compare=False, hash=False)
    #: the channel scored inside a multi-channel stack or container (the watch folder's
    #: ``channel`` setting, by name or 1-based number); None: a file's only or first plane
    channel: str | None = None
    #: the pixel size assumed for a file that states none (its watch folder's ``pixel_size_um``,
    #: as the daemon scored it); a store export gives it, so that images of another
    #: magnification are cut at the same physical tile as the rest
    pixel_size_um: float | None = dc_field(default=None, compare=False, hash=False)

    @property
    def well_key(self) -> tuple[str, str, str]:
        return (self.experiment, self.plate, self.well)

    @property
    def image_key(self) -> tuple:
        return (self.experiment, self.plate, self.well, self.field, self.timepoint, self.path)


@dataclass(frozen=True)
class DataInfo:
    """What a data folder says about itself (pixel size and tile size from tiles.json)."""

    source: str
    pixel_size_um: float | None = None
    tile_size: int | None = None
    classes: tuple[str, ...] = MULTICLASS


def scheme_classes(scheme: str) -> tuple[str, ...]:
    if scheme == "binary":
        return BINARY
    if scheme == "multiclass":
        return MULTICLASS
    raise DataError(f"scheme must be 'binary' or 'multiclass', not {scheme!r}")


def scheme_label(label: str, scheme: str) -> str | None:
    """Binary is neuron vs glia; undifferentiated wells have no binary answer and are left
    out (None) rather than forced into one side, which would teach the model a wrong fate."""
    if scheme == "multiclass":
        return label if label in MULTICLASS else None
    if label == "neuron":
        return "neuron"
    if label in GLIA or label == "glia":
        return "glia"
    return None


def read_tiles_export(root: str | Path, label_mode: str = "tile") -> tuple[list[TileRecord], DataInfo]:
    """Source (a): the simulator's labelled-tiles export.

    ``label_mode="tile"`` keeps the export's per-tile label (majority fate of the cells in the
    tile) and, as the soft-label target, the tile's own cell shares; ``"well"`` gives every
    tile its well's fate (the condition's dominant class), which
    is what end-point stains give in the product (source c) and what the well readout is
    judged against."""
    if label_mode not in LABEL_MODES:
        raise DataError(f"label_mode must be one of {LABEL_MODES}, not {label_mode!r}")
    root = Path(root)
    meta_path, csv_path = root / "tiles.json", root / "tiles.csv"
    if not csv_path.is_file():
        raise DataError(f"{root} has no tiles.csv (expected the simulator's tiles export)")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    records = []
    with csv_path.open(newline="") as fh:
        for n, row in enumerate(csv.DictReader(fh), start=2):
            fr = {k[5:]: float(v) for k, v in row.items() if k.startswith("frac_") and v not in ("", None)}
            records.append(TileRecord(
                path=_resolve(root, row["path"]), label=row["label"], experiment=row.get("experiment", ""),
                plate=row.get("plate", ""), well=row["well"], field=_int(row.get("field")),
                timepoint=_int(row.get("timepoint")), elapsed_h=_float(row.get("elapsed_h")),
                condition=row.get("condition", "") or "", split=(row.get("split") or None), fractions=fr,
                target=_shares(fr) if label_mode == "tile" else {},
                channel=(row.get("channel") or "").strip() or None,
                pixel_size_um=_pixel_size(row.get("pixel_size_um"), csv_path, n)))
    info = DataInfo("tiles", meta.get("pixel_size_um"), meta.get("tile_size"),
                    tuple(meta.get("classes", MULTICLASS)))
    if label_mode == "well":
        records = well_labels(records, meta.get("conditions") or {})
    elif label_mode == "endpoint":
        records = endpoint_labels(records)
    return records, info


def _shares(fractions: dict[str, float]) -> dict[str, float]:
    """Fractions normalised to sum to 1 (empty when there are none to normalise)."""
    total = sum(v for v in fractions.values() if v > 0)
    return {k: max(v, 0.0) / total for k, v in fractions.items()} if total > 0 else {}


def _resolve(root: Path, text: str) -> str:
    """A path of tiles.csv: relative to the export, or absolute (a store dataset points at the
    originals); a name that is not valid UTF-8 is written in the store's escaped form
    (``names.to_db``) so the CSV stays text, and is turned back into the file's real name here."""
    from nscmonitor.core.names import MARK, from_db

    return from_db(text) if text.startswith(MARK) else str(root / text)


def well_labels(records: Sequence[TileRecord], conditions: dict[str, dict]) -> list[TileRecord]:
    """Every tile takes its well's fate: the dominant class of the well's condition (from
    tiles.json ``conditions`` or the simulator's defaults), else the majority of the well's
    tile labels over all time points. Per-tile fractions are kept for reference."""
    from nscmonitor.simulate.culture import export_conditions

    conds = export_conditions(conditions)

    votes: dict[tuple, Counter] = defaultdict(Counter)
    for r in records:
        votes[r.well_key][r.label] += 1
    out = []
    for r in records:
        cond = conds.get(r.condition)
        out.append(replace(r, label=cond.label if cond else votes[r.well_key].most_common(1)[0][0],
                           binary=cond.binary if cond else None))
    return out


def endpoint_labels(records: Sequence[TileRecord]) -> list[TileRecord]:
    """Every tile takes the majority fate of its well's live cells at the well's last time
    point (the mean of those tiles' fractions): what an end-point stain counts. A recipe's
    nominal fate can differ from it (in a "mixed" well astrocytes outgrow neurons), and a
    model taught the recipe's fate learns to call astrocyte-rich fields neuron."""
    last: dict[tuple, float] = {}
    for r in records:
        if r.fractions and r.elapsed_h is not None:
            last[r.well_key] = max(last.get(r.well_key, r.elapsed_h), r.elapsed_h)
    shares: dict[tuple, Counter] = defaultdict(Counter)
    for r in records:
        if r.well_key in last and r.elapsed_h == last[r.well_key]:
            shares[r.well_key].update(r.fractions)
    out = []
    for r in records:
        s = shares.get(r.well_key)
        total = sum(s.values()) if s else 0.0
        out.append(replace(r, label=max(s, key=s.get), target={k: v / total for k, v in s.items()}) if total > 0 else r)
    return out


def read_image_folder(root: str | Path) -> tuple[list[TileRecord], DataInfo]:
    """Source (b): ``class_name/*.tif``. Each file is its own 'well' because the tree says
    nothing about plates; users who need well-level splits should use a tiles export."""
    root = Path(root)
    records = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(class_dir.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                records.append(TileRecord(path=str(f), label=class_dir.name, plate="folder",
                                          well=f"{class_dir.name}/{f.stem}"))
    if not records:
        raise DataError(f"{root} holds no class_name/*.tif images")
    return records, DataInfo("folder")


def read_label_csv(path: str | Path) -> dict[tuple[str, str, str], tuple[str, dict[str, float]]]:
    """End-point labels per well: ``experiment, plate, well`` and ``label`` or ``frac_<class>``."""
    out = {}
    with Path(path).open(newline="") as fh:
        for n, row in enumerate(csv.DictReader(fh), start=2):
            fr = {k[5:]: float(v) for k, v in row.items() if k.startswith("frac_") and v not in ("", None)}
            label = (row.get("label") or "").strip()
            if not label and fr:
                label = max(fr, key=fr.get)
            if not label:
                raise DataError(f"{path}: row {row} has neither a label nor frac_<class> columns")
            out[(row.get("experiment", "") or "", row.get("plate", "") or "", _norm_well(row["well"]))] = (label, fr)
    return out


def join_store_records(images: Iterable[tuple],
                       labels: dict[tuple[str, str, str], tuple[str, dict[str, float]]]) -> list[TileRecord]:
    """Source (c): (path, experiment, plate, well, elapsed_h[, channel]) records from the
    store joined with end-point labels. Every earlier image of a well inherits the well's
    fate, because the stain that defines the label can only be taken at the end. Unlabelled
    wells drop out."""
    records = []
    for path, experiment, plate, well, elapsed_h, *channel in images:
        key = (experiment or "", plate or "", _norm_well(well))
        if key not in labels:
            continue
        label, fr = labels[key]
        records.append(TileRecord(path=str(path), label=label, experiment=key[0], plate=key[1],
                                  well=key[2], elapsed_h=elapsed_h, fractions=fr,
                                  channel=channel[0] if channel else None))
    return records


def discover(data: str | Path, label_mode: str = "tile") -> tuple[list[TileRecord], DataInfo]:
    """Pick the source from what the folder holds (tiles.csv -> export, else ImageFolder).
    ``label_mode`` applies to a tiles export (an ImageFolder's labels are per file)."""
    data = Path(data)
    if not data.exists():
        raise DataError(f"data folder not found: {data}")
    if (data / "tiles.csv").is_file():
        return read_tiles_export(data, label_mode)
    return read_image_folder(data)


def for_scheme(records: Sequence[TileRecord], scheme: str) -> tuple[list[TileRecord], list[str]]:
    """Map labels to the scheme and keep the order of ``scheme_classes``; returns (kept, notes)."""
    kept, dropped = [], Counter()
    for r in records:
        lab = r.binary if scheme == "binary" and r.binary is not None else scheme_label(r.label, scheme)
        if lab is None:
            dropped[r.label] += 1
        else:
            kept.append(replace(r, label=lab))
    notes = [f"{n} tiles labelled {lab!r} left out of the {scheme} scheme" for lab, n in sorted(dropped.items())]
    return kept, notes


def data_hash(records: Sequence[TileRecord]) -> str:
    """Content + labels + splits (+ the scored channel where one is set), so two runs with the
    same hash saw exactly the same data. A container's content is the whole file (or Zarr
    field folder), hashed once for all the images inside it."""
    from nscmonitor.readers.formats import content_hash

    h = hashlib.sha256()
    for r in sorted(records, key=lambda r: r.path):
        h.update(os.fsencode(Path(r.path).name))
        h.update(f"|{r.label}|{r.split}|{r.well_key}|{r.elapsed_h}|".encode())
        if r.channel is not None:
            h.update(f"channel={r.channel}|".encode())
        digest = content_hash(r.path)
        if digest is None:
            raise DataError(f"{r.path}: image not found")
        h.update(bytes.fromhex(digest))
    return "sha256:" + h.hexdigest()


def read_image(path: str | Path, *, channel: str | None = None) -> np.ndarray:
    """The plane the daemon scores, read by the daemon's own ``decode``: 2-D intensities in
    the file's own dtype (the histogram percentiles depend on integer data staying integer),
    the ``channel`` of a multi-channel stack or container (its first plane when None), RGB
    as the daemon sees it. A file the daemon could not read is a ``DataError`` naming it.
    The content hash is skipped: ``data_hash`` hashes every file once before loading."""
    return read_plane(path, channel=channel)[0]


def read_plane(path: str | Path, *, channel: str | None = None,
               fallback_um: float | None = None) -> tuple[np.ndarray, float | None]:
    """``read_image`` and the pixel size the daemon assumes for it: the file's own, else
    ``fallback_um`` (its watch folder's setting)."""
    from nscmonitor.readers.decode import DecodeError, decode

    try:
        dec = decode(path, channel=channel, content_hash=False)
    except DecodeError as exc:
        raise DataError(f"{path}: {exc.reason}") from exc
    return dec.pixels, dec.pixel_size_um or fallback_um


def model_pixel_um(source_um: float | None, tile_size: int | None, image_size: int) -> float | None:
    """The model's pixel size: ``tile_size`` source pixels of ``source_um`` (the export's
    pixel size) resampled to ``image_size``; None where either is unknown."""
    if not source_um or not tile_size:
        return None
    return float(source_um) * tile_size / image_size


def image_tiles(path: str | Path, tile_size: int | None, image_size: int, *, channel: str | None = None,
                p_low: float = P_LOW, p_high: float = P_HIGH, model_um: float | None = None,
                fallback_um: float | None = None) -> np.ndarray:
    """One image -> N x image_size x image_size model inputs through the daemon's own
    reader and preprocessing (``scoring.preprocess``). Where the model's pixel size
    (``model_um``) and the image's (the file's own, else ``fallback_um``) are both known,
    the image is resampled between them, as the daemon does, so images of several
    magnifications train at one scale; else ``tile_size`` source pixels make one tile (the
    whole image when None)."""
    from nscmonitor.scoring.preprocess import Preprocess

    img, image_um = read_plane(path, channel=channel, fallback_um=fallback_um)
    pre = Preprocess(input_size=image_size, p_low=p_low, p_high=p_high, pixel_size_um=model_um)
    return pre.tiles(img, factor=pre.factor(image_um, tile_px=tile_size or max(img.shape))).tiles[:, 0]


def raw_tiles(records: Sequence[TileRecord], tile_size: int | None, limit: int, *, seed: int = 0,
              p_low: float = P_LOW, p_high: float = P_HIGH,
              source_um: float | None = None) -> tuple[list[np.ndarray], list[str], list[str], np.ndarray]:
    """A seeded sample of RAW tiles (file intensities) for the calibration set that travels
    with the model: one tile per chosen image. A tiles-export file is one tile and its own
    image; from a larger image one grid cell of ``tile_size`` pixels is cut and the image's
    percentiles come along (the contract scales per image). The set has one pixel size, the
    export's (``source_um``): an image of another magnification gives a cell of another size,
    and is passed over. Returns (tiles, wells, labels, lohi as N x 2)."""
    from nscmonitor.scoring.preprocess import percentiles, tile_px_at

    unique = list(dict.fromkeys(records))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(unique))
    tiles, wells, labels, lohi = [], [], [], []
    shape = None
    for i in order:
        if len(tiles) >= limit:
            break
        r = unique[i]
        img, image_um = read_plane(r.path, channel=r.channel, fallback_um=r.pixel_size_um)
        t = tile_size or min(img.shape)
        h, w = img.shape
        if h < t or w < t or (tile_size and tile_px_at(tile_size, source_um, image_um) != tile_size):
            continue
        rows, cols = h // t, w // t
        cell = int(rng.integers(rows * cols))
        y = (h - rows * t) // 2 + cell // cols * t
        x = (w - cols * t) // 2 + cell % cols * t
        crop = img[y:y + t, x:x + t]
        if shape is None:
            shape = crop.shape
        if crop.shape != shape:
            continue
        tiles.append(np.ascontiguousarray(crop))
        wells.append("/".join(p for p in r.well_key if p))
        labels.append(r.label)
        lohi.append(percentiles(img, (p_low, p_high)))
    return tiles, wells, labels, np.asarray(lohi, np.float64).reshape(-1, 2)


def load_arrays(records: Sequence[TileRecord], classes: Sequence[str], *, tile_size: int | None,
                image_size: int, progress: bool = False,
                model_um: float | None = None) -> tuple[np.ndarray, np.ndarray, list[TileRecord]]:
    """Decode, scale and tile every record once (float16 in memory): (x, y, tile_records).
    ``model_um``: the model's pixel size, to which each image is resampled from its own
    (``image_tiles``)."""
    index = {c: i for i, c in enumerate(classes)}
    xs, ys, recs = [], [], []
    it = records
    if progress:
        from rich.progress import track
        it = track(records, description="loading tiles", transient=True, disable=not sys.stdout.isatty())
    for r in it:
        t = image_tiles(r.path, tile_size, image_size, channel=r.channel, model_um=model_um,
                        fallback_um=r.pixel_size_um)
        xs.append(t.astype(np.float16))
        ys.extend([index[r.label]] * len(t))
        recs.extend([r] * len(t))
    if not xs:
        return np.zeros((0, image_size, image_size), np.float16), np.zeros(0, np.int64), []
    return np.concatenate(xs), np.asarray(ys, np.int64), recs


def soft_targets(records: Sequence[TileRecord], classes: Sequence[str]) -> np.ndarray:
    """Per tile, its target shares over ``classes`` (summing to 1) for training with soft
    labels: its well's end-point shares (label mode ``endpoint``), so that the mean of a well's
    tile probabilities estimates what its stain would count, or the tile's own cells (label
    mode ``tile``, a simulator export), the most local truth there is. Shares of fates outside
    ``classes`` are left out and the rest renormalised."""
    out = np.zeros((len(records), len(classes)), np.float32)
    for i, r in enumerate(records):
        v = np.array([r.target.get(c, 0.0) for c in classes], np.float64)
        if not r.target or v.sum() <= 0:
            raise DataError(f"{r.path}: soft labels need fractions per fate, and it has none (use label mode "
                            "'endpoint' or 'tile' with a simulator export, or 'endpoint' with labels that give "
                            "frac_<class>)")
        out[i] = v / v.sum()
    return out


def class_counts(records: Sequence[TileRecord], classes: Sequence[str]) -> list[int]:
    c = Counter(r.label for r in records)
    return [c.get(k, 0) for k in classes]


def _int(v: str | None) -> int | None:
    return int(float(v)) if v not in (None, "") else None


def _pixel_size(v: str | None, path: Path, line: int) -> float | None:
    """A row's fallback pixel size: empty, or a number in the range the readers accept; a
    hand-edited export with anything else is refused at its line, not trained at a wrong scale."""
    from nscmonitor.readers.decode import PIXEL_SIZE_RANGE_UM

    if v in (None, ""):
        return None
    lo, hi = PIXEL_SIZE_RANGE_UM
    try:
        um = float(v)
    except ValueError:
        um = math.nan
    if not lo <= um <= hi:
        raise DataError(f"{path}, line {line}: pixel_size_um {v!r} is not a pixel size in um ({lo:g}..{hi:g})")
    return um


def _float(v: str | None) -> float | None:
    return float(v) if v not in (None, "") else None


def _norm_well(well: str) -> str:
    """A1 and A01 name the same well in label CSVs typed by hand."""
    from nscmonitor.core.domain import parse_well, well_name
    try:
        return well_name(*parse_well(well))
    except ValueError:
        return well.strip()
