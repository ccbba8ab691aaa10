"""Labelled tiles on disk -> arrays in the model's input contract.

Int8 calibration and every validation gate must see tiles exactly as the daemon feeds them,
otherwise the quantization ranges (and the agreement we certify) belong to a different input
distribution: every image here goes through ``scoring.preprocess.Preprocess``. The folder format is the simulator's / training set's: ``DIR/tiles.csv`` with at
least ``path`` and ``split`` columns (paths relative to DIR, 2-D TIFF raw intensities), and
optionally ``label``, ``plate``, ``well``; ``DIR/tiles.json`` describes the set and is not needed
here.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nscmonitor.engines.base import EngineError
from nscmonitor.engines.enginefile import file_sha256
from nscmonitor.engines.metadata import MetadataError, ModelMetadata, read_onnx_metadata
from nscmonitor.scoring.preprocess import Preprocess

HELD_OUT_SPLITS = ("val", "valid", "validation", "test", "holdout", "heldout")


@dataclass(frozen=True)
class TileSet:
    """Tiles ready for ``Engine.infer`` and, per tile, the well it came from so gates can
    compare well-level readouts (the number the scientist actually sees)."""

    x: np.ndarray
    groups: tuple[str, ...]
    labels: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.x)


def folder_factor(folder: Path, pre: Preprocess, tile_px: int) -> float:
    """How a tiles folder's images map to model tiles: by pixel size when the folder
    (tiles.json) and the model both know theirs, else by the folder's ``tile_size`` (source
    pixels per tile, as training cuts a store's frames), else each image is one model tile."""
    info = folder / "tiles.json"
    src_um = tile = None
    if info.is_file():
        try:
            meta = json.loads(info.read_text())
            src_um, tile = meta.get("pixel_size_um"), meta.get("tile_size")
        except (OSError, ValueError, AttributeError):
            src_um = tile = None
    return pre.factor(src_um, tile_px=tile or tile_px)


def _read_rows(folder: Path) -> list[dict[str, str]]:
    table = folder / "tiles.csv"
    if not table.is_file():
        raise EngineError(f"{folder} has no tiles.csv (expected columns path,...,split)")
    with table.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "path" not in rows[0] or "split" not in rows[0]:
        raise EngineError(f"{table} needs at least the columns 'path' and 'split'")
    return rows


def _read_tile(path: Path, row: dict[str, str]) -> np.ndarray:
    """A tiles folder's image read as the daemon and training read it (``decode``), in the
    row's ``channel`` where the folder comes from the store: a multi-channel stack or a
    container's scene calibrates on the plane that is scored, not on its first plane."""
    from nscmonitor.readers.decode import DecodeError, decode

    try:
        return decode(path, channel=(row.get("channel") or "").strip() or None).pixels
    except DecodeError as exc:
        raise EngineError(f"cannot read calibration tile {path}: {exc.reason}") from exc


def load_tiles(folder: str | Path, meta: ModelMetadata, *, splits: tuple[str, ...] | None = None,
               limit: int | None = None, seed: int = 0) -> TileSet:
    """Load tiles of the given splits (all when None), a seeded random subset if ``limit``.

    The subset is stratified by nothing on purpose: calibration wants the data's own class
    mix, and a fixed seed makes a rebuilt int8 model reproducible.
    """
    folder = Path(folder)
    rows = _read_rows(folder)
    if splits is not None:
        wanted = {s.lower() for s in splits}
        rows = [r for r in rows if r["split"].strip().lower() in wanted]
    if not rows:
        raise EngineError(f"{folder}/tiles.csv has no tiles in splits {splits}")
    if limit is not None and len(rows) > limit:
        pick = np.random.default_rng(seed).choice(len(rows), size=limit, replace=False)
        rows = [rows[i] for i in sorted(pick)]
    pre = Preprocess.from_metadata(meta)
    xs, groups, labels = [], [], []
    for r in rows:
        path = folder / r["path"]
        img = _read_tile(path, r)
        tiles = pre.tiles(img, factor=folder_factor(folder, pre, max(img.shape))).tiles
        well = r.get("well") or ""
        xs.append(tiles)
        groups += [f"{r.get('plate') or ''}/{well}" if well else "all"] * len(tiles)
        labels += [r.get("label") or ""] * len(tiles)
    if not groups:
        raise EngineError(f"every tile in {folder} is empty (no intensity variation)")
    return TileSet(np.concatenate(xs), tuple(groups), tuple(labels), str(folder))


def calibration_and_heldout(folder: str | Path, meta: ModelMetadata, *, n_calib: int = 128,
                            n_heldout: int = 512, seed: int = 0) -> tuple[TileSet, TileSet]:
    """Calibrate on training tiles, certify on held-out ones: checking agreement on the tiles
    that set the quantization ranges would flatter the int8 model."""
    calib = load_tiles(folder, meta, splits=("train",), limit=n_calib, seed=seed)
    held = load_tiles(folder, meta, splits=HELD_OUT_SPLITS, limit=n_heldout, seed=seed + 1)
    return calib, held


# -- the model's own calibration and held-out tiles ------------------------------------------
#
# Every training run writes a small fixed labelled set of RAW tiles (file intensities, before
# any scaling) next to model.onnx; the ONNX metadata records its hash and the registry copies
# it into the version folder. Raw, so that the set is pushed through the model's input
# contract at build time, exactly like a frame in the daemon: a set stored already scaled
# would certify whatever preprocessing wrote it.

TILES_FILE = "calibration.npz"
MANIFEST_FILE = "calibration.json"
TILES_FORMAT = 1
N_CALIB = 128
N_HELDOUT = 512


@dataclass(frozen=True)
class ModelTiles:
    calib: TileSet  # preprocessed through Preprocess.from_metadata(meta), ready for Engine.infer
    heldout: TileSet  # same, from val/test, with .groups = well ids for well-level gates
    sha256: str


def model_tiles_path(model_path: Path) -> Path:
    """``<model dir>/calibration.npz`` (its manifest is ``calibration.json`` beside it)."""
    return Path(model_path).parent / TILES_FILE


def write_model_tiles(model_dir: Path, raw_calib, calib_wells, raw_heldout, heldout_wells, heldout_labels, *,
                      source: str, pixel_size_um: float | None = None,
                      calib_lohi: np.ndarray | None = None, heldout_lohi: np.ndarray | None = None,
                      attached: bool = False) -> Path:
    """Write ``calibration.npz`` + ``calibration.json`` (counts, splits, source, sha256).

    ``raw_*`` are 2-D raw tiles of one shape. ``pixel_size_um`` is theirs when known (else one
    raw tile is one model tile). ``*_lohi`` are the percentiles of the image each tile was cut
    from when that image was larger than the tile (the contract scales per image, not per
    tile); without them the tile is its own image. ``attached`` marks a set given to a model
    after training (``models register --calibration``), which the ONNX metadata cannot name.
    """
    model_dir = Path(model_dir)
    calib, held = _stack(raw_calib, "calibration"), _stack(raw_heldout, "held-out")
    if calib.shape[1:] != held.shape[1:]:
        raise EngineError(f"calibration and held-out tiles differ in shape: {calib.shape[1:]} vs {held.shape[1:]}")
    if not (len(calib_wells) == len(calib) and len(heldout_wells) == len(heldout_labels) == len(held)):
        raise EngineError("every calibration and held-out tile needs its well (and held-out tiles their label)")
    arrays = {"calib_raw": calib, "calib_wells": np.asarray([str(w) for w in calib_wells], dtype=str),
              "heldout_raw": held, "heldout_wells": np.asarray([str(w) for w in heldout_wells], dtype=str),
              "heldout_labels": np.asarray([str(v) for v in heldout_labels], dtype=str)}
    for name, lohi, n in (("calib_lohi", calib_lohi, len(calib)), ("heldout_lohi", heldout_lohi, len(held))):
        if lohi is not None:
            lohi = np.asarray(lohi, np.float64)
            if lohi.shape != (n, 2):
                raise EngineError(f"{name} must be {n} x 2 (low, high percentile per tile), got {lohi.shape}")
            arrays[name] = lohi
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / TILES_FILE
    part = path.with_name(path.name + ".part")
    with part.open("wb") as fh:
        np.savez_compressed(fh, **arrays)
    sha = file_sha256(part)
    manifest = {
        "format": TILES_FORMAT, "file": TILES_FILE, "sha256": sha, "source": source,
        "origin": "attached" if attached else "training",
        "splits": {"calib": "train", "heldout": "val+test"},
        "counts": {"calib": len(calib), "heldout": len(held)},
        "wells": {"calib": len(set(arrays["calib_wells"])), "heldout": len(set(arrays["heldout_wells"]))},
        "heldout_labels": dict(sorted(Counter(arrays["heldout_labels"].tolist()).items())),
        "tile_shape": list(calib.shape[1:]), "dtype": str(calib.dtype), "pixel_size_um": pixel_size_um,
        "per_image_percentiles": "calib_lohi" in arrays,
    }
    mpart = model_dir / (MANIFEST_FILE + ".part")
    mpart.write_text(json.dumps(manifest, indent=2))
    os.replace(part, path)
    os.replace(mpart, model_dir / MANIFEST_FILE)
    return path


def read_manifest(npz_path: Path) -> dict:
    """The manifest beside a calibration.npz, its hash checked against the file."""
    npz_path = Path(npz_path)
    mpath = npz_path.with_name(MANIFEST_FILE)
    try:
        manifest = json.loads(mpath.read_text())
        expected = manifest["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EngineError(f"{mpath}: missing or unreadable calibration manifest ({exc})") from exc
    actual = file_sha256(npz_path)
    if actual != expected:
        raise EngineError(f"{npz_path}: sha256 {actual[:12]} does not match its manifest ({str(expected)[:12]}); "
                          "the calibration set is corrupt or was replaced")
    return manifest


def load_model_tiles(model_path: Path, meta: ModelMetadata | None = None) -> ModelTiles | None:
    """The model's own calibration and held-out tiles in its input contract, or None when it
    has none (it is then served in fp32). Raises EngineError when the set is there but
    corrupt, its hash does not match, or it belongs to another model."""
    model_path = Path(model_path)
    path = model_tiles_path(model_path)
    if not path.is_file():
        return None
    manifest = read_manifest(path)
    if meta is None:
        try:
            meta = read_onnx_metadata(model_path)
        except MetadataError as exc:
            raise EngineError(str(exc)) from exc
    sha = manifest["sha256"]
    recorded = meta.calibration_sha256
    if recorded and recorded != sha and manifest.get("origin") != "attached":
        raise EngineError(f"{path} (sha256 {sha[:12]}) is not the calibration set {model_path.name} was trained "
                          f"with ({recorded[:12]})")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as exc:
        raise EngineError(f"{path} is not a readable calibration set: {exc}") from exc
    need = ("calib_raw", "calib_wells", "heldout_raw", "heldout_wells", "heldout_labels")
    missing = [k for k in need if k not in data]
    if missing:
        raise EngineError(f"{path} lacks {', '.join(missing)}")
    pre = Preprocess.from_metadata(meta)
    px = manifest.get("pixel_size_um")
    calib = _tileset(pre, data["calib_raw"], data.get("calib_lohi"), data["calib_wells"], None, px, f"{path}:calib")
    held = _tileset(pre, data["heldout_raw"], data.get("heldout_lohi"), data["heldout_wells"],
                    data["heldout_labels"], px, f"{path}:heldout")
    return ModelTiles(calib, held, sha)


def _tileset(pre: Preprocess, raw: np.ndarray, lohi: np.ndarray | None, wells: np.ndarray,
             labels: np.ndarray | None, px: float | None, source: str) -> TileSet:
    xs, groups, labs = [], [], []
    for i, img in enumerate(raw):
        tiles = pre.tiles(img, factor=pre.factor(px, tile_px=max(img.shape)),
                          lohi=tuple(lohi[i]) if lohi is not None else None).tiles
        xs.append(tiles)
        groups += [str(wells[i])] * len(tiles)
        labs += [str(labels[i]) if labels is not None else ""] * len(tiles)
    if not groups:
        raise EngineError(f"{source}: every tile is empty (no intensity variation)")
    return TileSet(np.concatenate(xs), tuple(groups), tuple(labs), source)


def _stack(raw, what: str) -> np.ndarray:
    arrs = [np.asarray(a) for a in raw]
    if not arrs:
        raise EngineError(f"no {what} tiles to write")
    shapes = {a.shape for a in arrs}
    if len(shapes) != 1 or arrs[0].ndim != 2:
        raise EngineError(f"{what} tiles must be 2-D and share one shape, got {sorted(shapes)[:3]}")
    return np.stack(arrs)


def pick(n_items: int, limit: int, seed: int) -> list[int]:
    """A seeded subset (all when there are fewer), in the original order, so a rebuilt
    calibration set is the same set."""
    if n_items <= limit:
        return list(range(n_items))
    return sorted(np.random.default_rng(seed).choice(n_items, size=limit, replace=False).tolist())


def tiles_from_folder(folder: str | Path, model_dir: Path, *, n_calib: int = N_CALIB, n_heldout: int = N_HELDOUT,
                      seed: int = 0) -> Path:
    """Give a model a calibration set from elsewhere: a calibration.npz (with or without its
    manifest) or a labelled tiles folder (``tiles.csv``: train tiles calibrate, val/test
    tiles certify). Written into ``model_dir`` as an attached set."""
    folder = Path(folder)
    if folder.is_file() and folder.suffix == ".npz" or (folder / TILES_FILE).is_file():
        npz = folder if folder.is_file() else folder / TILES_FILE
        if npz.with_name(MANIFEST_FILE).is_file():
            read_manifest(npz)
        try:
            with np.load(npz, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError) as exc:
            raise EngineError(f"{npz} is not a readable calibration set: {exc}") from exc
        missing = [k for k in ("calib_raw", "calib_wells", "heldout_raw", "heldout_wells", "heldout_labels")
                   if k not in d]
        if missing:
            raise EngineError(f"{npz} is not a calibration set: it lacks the arrays {', '.join(missing)}")
        px = None
        if npz.with_name(MANIFEST_FILE).is_file():
            px = json.loads(npz.with_name(MANIFEST_FILE).read_text()).get("pixel_size_um")
        return write_model_tiles(model_dir, d["calib_raw"], d["calib_wells"], d["heldout_raw"], d["heldout_wells"],
                                 d["heldout_labels"], source=str(npz), pixel_size_um=px,
                                 calib_lohi=d.get("calib_lohi"), heldout_lohi=d.get("heldout_lohi"), attached=True)
    rows = _read_rows(folder)
    info = folder / "tiles.json"
    px = json.loads(info.read_text()).get("pixel_size_um") if info.is_file() else None

    def read(split_rows: Sequence[dict[str, str]], limit: int, s: int) -> tuple[list, list, list]:
        chosen = [split_rows[i] for i in pick(len(split_rows), limit, s)]
        imgs, wells, labels = [], [], []
        for r in chosen:
            imgs.append(_read_tile(folder / r["path"], r))
            wells.append(f"{r.get('plate') or ''}/{r.get('well') or ''}")
            labels.append(r.get("label") or "")
        return imgs, wells, labels

    train = [r for r in rows if r["split"].strip().lower() == "train"]
    held = [r for r in rows if r["split"].strip().lower() in HELD_OUT_SPLITS]
    if not train or not held:
        raise EngineError(f"{folder}/tiles.csv needs tiles in split 'train' and in one of {HELD_OUT_SPLITS}")
    ci, cw, _ = read(train, n_calib, seed)
    hi, hw, hl = read(held, n_heldout, seed + 1)
    return write_model_tiles(model_dir, ci, cw, hi, hw, hl, source=str(folder), pixel_size_um=px, attached=True)
