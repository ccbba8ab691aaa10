"""Container formats read natively: Nikon ND2, Zeiss CZI and OME-Zarr HCS plates.

Each reader is an optional extra, imported only when a file of its format arrives, and
follows one contract: open lazily, learn the plane's size from the metadata, check it
against the same pixel cap ``decode`` uses before reading, read only the plane that is
scored, and return what ``decode`` returns (``Decoded``). A container may hold several
images (ND2 positions, CZI scenes, the fields of a Zarr plate): each becomes one image row,
addressed by a reference (the file's path, ``|``, the unit inside it), so the queue,
retries and rescoring work per image as for single files. OME-TIFF stacks go through the
TIFF path of ``decode`` with the channel chosen by ``ometiff``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from nscmonitor.core.domain import ImageKey
from nscmonitor.readers.decode import HASH_CHUNK, DecodeError, Decoded, why

log = logging.getLogger(__name__)

#: separates a container file's path from the image inside it in an image's stored path;
#: Windows forbids it in file names, and a real file of that name is always read as a file
REF_SEP = "|"

#: suffix -> (format, importable module, extra that installs it)
FORMATS: dict[str, tuple[str, str, str]] = {
    ".nd2": ("ND2", "nd2", "nd2"),
    ".czi": ("CZI", "pylibCZIrw", "czi"),
}
ZARR = ("OME-Zarr", "zarr", "zarr")
#: a time point of an OME-TIFF time series (``FILE.ome.tif|t=N``); tifffile is always installed
OME_TIFF = ("OME-TIFF time series", "tifffile", "cpu")


@dataclass(frozen=True)
class Plane:
    """The scored plane of a container image, before hashing."""

    pixels: object  # np.ndarray
    pixel_size_um: float | None


#: an unreadable container is looked at this many times (same size and mtime) before it is
#: queued anyway, so that decoding records why it cannot be read
MAX_LOOKS = 3


class NotReady(Exception):
    """The container cannot be opened yet: ND2 and CZI write their directory last, so a file
    still being acquired (with pauses longer than the quiet period) has none."""


@dataclass(frozen=True)
class Unit:
    """One image inside a container. ``key`` is its place from the container's own metadata
    (None: placed by the file name, as a single file); ``error`` says why it cannot be read."""

    ref: str
    key: ImageKey | None = None
    profile: str | None = None
    error: str | None = None
    #: for a time point of a stack placed by its file name: its 1-based index and when it was
    #: taken (the stack's acquisition date plus the plane's offset), or, without a date, the
    #: hours since the stack's first plane
    timepoint: int | None = None
    acquired_at: datetime | None = None
    elapsed_h: float | None = None
    #: for one of several positions or scenes that name no well, in a file placed by its name:
    #: its 0-based order and how many there are (the name's field, or the well, is divided
    #: among them: ``intake.describe.subfield``)
    position: int | None = None
    positions: int = 1


def split_ref(ref: str) -> tuple[str, dict[str, int]]:
    """A stored image path -> the file (or Zarr field folder) and the unit inside it."""
    if REF_SEP not in ref or os.path.lexists(ref):
        return ref, {}
    path, _, spec = ref.rpartition(REF_SEP)
    out = {}
    for part in spec.split(","):
        k, _, v = part.partition("=")
        if not v.isdigit():
            return ref, {}
        out[k] = int(v)
    return path, out


def make_ref(path: str, **unit: int) -> str:
    return path + REF_SEP + ",".join(f"{k}={v}" for k, v in unit.items()) if unit else path


def zarr_root(path: str | Path) -> Path | None:
    """The ``*.zarr`` folder a path lies in (the plate), or None."""
    if ".zarr" not in str(path).lower():  # no part can end with it: the common case, without a parse
        return None
    parts = Path(path).parts
    for i, part in enumerate(parts):
        if part.lower().endswith(".zarr"):
            return Path(*parts[: i + 1])
    return None


def format_of(ref: str) -> tuple[str, str, str] | None:
    """(format, module, extra) of a stored image path, or None for files ``decode`` reads."""
    path, unit = split_ref(ref)
    spec = FORMATS.get(Path(path).suffix.lower())
    if spec is not None:
        return spec
    if zarr_root(path) is not None and os.path.isdir(path):
        return ZARR
    if "t" in unit and is_ome_tiff(path):
        return OME_TIFF
    return None


def is_ome_tiff(path: str) -> bool:
    return path.lower().endswith((".ome.tif", ".ome.tiff"))


def missing_reader(fmt: str, module: str, extra: str) -> str | None:
    """Why files of this format cannot be read here (the reader is not installed), or None."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        return f"{fmt} files need the optional reader {module}: pip install 'nscmonitor[{extra}]'"
    return None


def reader_status() -> list[tuple[str, str | None, str]]:
    """(format, installed version or None, what to do) for each optional reader, so an
    operator sees which container formats this installation reads before a file arrives
    and is quarantined. The module is found, not imported (importing a reader costs
    seconds and is only done when a file of its format arrives); the version comes from the
    installed distribution."""
    import importlib.util
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for fmt, module, extra in (*FORMATS.values(), ZARR):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append((fmt, None, f"not installed: pip install 'nscmonitor[{extra}]'"))
            continue
        try:
            ver = version(module)
        except PackageNotFoundError:  # importable but not installed as a distribution (a source tree)
            ver = "unknown version"
        out.append((fmt, ver, f"{module} {ver}"))
    return out


def units(path: str) -> list[Unit] | None:
    """The images inside a container file, from its metadata; None for a file that is not a
    container. Positions and scenes become wells and fields only when the metadata names
    the wells; otherwise the file is one image placed by its name, as a single file is. An
    OME-TIFF time series gives one image per time point, each placed by the file's name.
    Raises ``NotReady`` when the container cannot be opened (yet)."""
    if is_ome_tiff(path) and _regular(path):
        from nscmonitor.readers.formats import ometiff

        try:
            return ometiff.time_units(path)
        except Exception as exc:  # tifffile raises many types for a file still being written
            raise NotReady(why(exc)) from exc
    spec = FORMATS.get(Path(path).suffix.lower())
    if spec is None or not _regular(path):
        return None  # a FIFO or device named like a container would block its reader
    missing = missing_reader(*spec)
    if missing:
        return [Unit(path, error=missing)]
    try:
        if spec[0] == "ND2":
            from nscmonitor.readers.formats import nd2 as reader
        else:
            from nscmonitor.readers.formats import czi as reader
        found = reader.units(path)
    except Exception as exc:  # readers raise many types for a container without its directory
        raise NotReady(why(exc)) from exc
    return found or [Unit(path)]


def decode_native(ref: str, *, channel: str | None, max_pixels: int, max_bytes: int,
                  content_hash: bool = True) -> Decoded:
    """``decode`` for a container image: the scored plane, then the hash of its bytes (the
    whole file, or the Zarr field folder's files), and the same check that nothing changed
    while it was read. The byte cap applies to a Zarr field; an ND2 or CZI file holds a
    whole plate (often many GB) of which one plane is read, so its size is not capped and
    its hash is computed once per version of the file for all the images inside it."""
    fmt, module, extra = format_of(ref)  # type: ignore[misc] - only called for containers
    path, unit = split_ref(ref)
    missing = missing_reader(fmt, module, extra)
    if missing:
        raise DecodeError(missing, permanent=True)
    if not os.path.isdir(path) and os.path.lexists(path) and not _regular(path):
        raise DecodeError("not a regular file", permanent=True)
    before = fingerprint(path)
    if before is None:
        raise DecodeError("file disappeared before it could be read", permanent=False)
    if before[1] == 0:
        raise DecodeError("empty file (0 bytes)", permanent=True)
    if fmt == ZARR[0] and before[1] > max_bytes and "t" not in unit:  # a time-lapse field: one plane is read
        raise DecodeError(f"{fmt} data of {before[1]} bytes is above the {max_bytes}-byte cap", permanent=True)
    reader = _reader(fmt)
    try:
        plane = reader(path, unit, channel=channel, max_pixels=max_pixels)
        digest = _hash_once(path, before) if content_hash else ""
    except DecodeError:
        raise
    except PermissionError as exc:
        raise DecodeError(f"file is locked or not readable: {why(exc)}", permanent=False) from exc
    except OSError as exc:
        raise DecodeError(f"cannot read {fmt} data: {why(exc)}", permanent=False) from exc
    except Exception as exc:  # readers raise many types for truncated or odd files
        raise DecodeError(f"{fmt} data cannot be read (incomplete or corrupt): {why(exc)}", permanent=False) from exc
    if fingerprint(path) != before:
        raise DecodeError("file changed while it was read; read again later", permanent=False)
    import numpy as np

    arr = np.asarray(plane.pixels)
    if arr.ndim != 2 or min(arr.shape) < 8:
        raise DecodeError(f"decoded plane has shape {arr.shape}; expected a 2-D image of at least 8 x 8", permanent=True)
    if arr.dtype.kind not in "uif" or arr.dtype == np.bool_:
        raise DecodeError(f"unsupported pixel type {arr.dtype}", permanent=True)
    return Decoded(arr, str(arr.dtype), plane.pixel_size_um, digest)


def channel_for(watch: Iterable, path: str, default: str | None = None) -> str | None:  # Iterable[config.WatchFolder]
    """The ``channel`` setting of the watch folder an image lies in: the daemon scores that
    channel inside stacks and containers, and retraining must read the same plane.
    ``default`` for an image outside every folder."""
    folder = _folder_of(watch, path)
    return default if folder is None else folder.channel


def pixel_size_for(watch: Iterable, path: str) -> float | None:  # Iterable[config.WatchFolder]
    """The ``pixel_size_um`` setting of the watch folder an image lies in: the pixel size of
    its files that state none (None outside every folder, or where the folder sets none)."""
    folder = _folder_of(watch, path)
    return None if folder is None else folder.pixel_size_um


def _folder_of(watch: Iterable, path: str):  # noqa: ANN202 (config.WatchFolder | None)
    for w in watch:
        root = str(w.path).rstrip("/\\")
        if path.startswith(root + os.sep) or path.startswith(root + "/"):
            return w
    return None


def _regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _reader(fmt: str) -> Callable[..., Plane]:
    if fmt == "ND2":
        from nscmonitor.readers.formats.nd2 import read
    elif fmt == "CZI":
        from nscmonitor.readers.formats.czi import read
    elif fmt == OME_TIFF[0]:
        from nscmonitor.readers.formats.ometiff import read
    else:
        from nscmonitor.readers.formats.omezarr import read
    return read


def _files(path: str) -> list[Path]:
    p = Path(path)
    if not p.is_dir():
        return [p]
    return sorted(q for q in p.rglob("*") if q.is_file() and not q.is_symlink())


def fingerprint(path: str) -> tuple[int, int, int] | None:
    """(files, bytes, newest mtime in ns) of a file or of a Zarr field folder."""
    try:
        stats = [os.stat(q) for q in _files(path)]
    except FileNotFoundError:
        return None
    return len(stats), sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)


_HASHES: dict[tuple[str, tuple[int, int, int]], str] = {}
_HASHES_KEPT = 256


def _hash_once(path: str, fp: tuple[int, int, int]) -> str:
    """The hash of a container file, remembered for its (files, bytes, mtime): the positions
    or scenes of one file would otherwise each read all of it again."""
    key = (path, fp)
    if key not in _HASHES:
        if len(_HASHES) >= _HASHES_KEPT:
            _HASHES.pop(next(iter(_HASHES)))
        _HASHES[key] = _hash(path)
    return _HASHES[key]


def content_hash(ref: str) -> str | None:
    """sha256 of what a stored image path reads: the file, the ND2/CZI file holding the
    image, or the Zarr field folder; None when it is gone. A container's hash is the one
    ``decode`` computes and is remembered per version of the file, so hashing a training
    set and then decoding its scenes reads a multi-GB container once, not once per scene."""
    path, _ = split_ref(ref)
    fp = fingerprint(path)
    if fp is None:
        return None
    return _hash(path) if format_of(ref) is None else _hash_once(path, fp)


def _hash(path: str) -> str:
    """sha256 of the file, or of a folder's files in name order (names included), read in
    1 MiB chunks."""
    h = hashlib.sha256()
    root = Path(path)
    for q in _files(path):
        if root.is_dir():
            h.update(q.relative_to(root).as_posix().encode() + b"\0")
        with open(q, "rb") as fh:
            while chunk := fh.read(HASH_CHUNK):
                h.update(chunk)
    return h.hexdigest()


#: no container stores a frame in fewer bytes than this (an ND2 frame's chunk alone is 4 KiB,
#: a CZI sub-block's headers 288 bytes): a file whose metadata declares more frames than its
#: size can hold is corrupt or hostile, and nothing may be sized by the declaration
MIN_BYTES_PER_FRAME = 256


def declared_frames_error(declared: int, path: str, fmt: str) -> str | None:
    """Why a container's declared frame count cannot be believed (None when it can): the
    readers would otherwise build a list entry per declared frame, and a corrupt loop count of
    400 million exhausts the machine's memory before a frame is read."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return None  # the reader finds out why
    if declared > max(1, size // MIN_BYTES_PER_FRAME):
        return (f"the {fmt} file declares {declared} frames, more than its {size} bytes can hold: "
                "corrupt metadata (not read)")
    return None


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """The pixel cap of ``decode``, applied to a container's plane before it is read."""
    if width * height > max_pixels:
        raise DecodeError(f"frame of {width} x {height} pixels is above the cap of {max_pixels} pixels",
                          permanent=True)


def pick_channel(names: list[str], count: int, channel: str | None, fmt: str) -> int:
    """Which channel to score: by name (case-insensitive), or by its 1-based number as in
    vendors' file names; the first when the setting is empty or the image has one channel.
    A name or number the image does not have is a permanent error listing the channels, so
    a wrong setting never scores the wrong plane silently."""
    if count <= 1 or channel is None:
        return 0
    wanted = channel.strip().lower()
    for i, name in enumerate(names[:count]):
        if name is not None and name.strip().lower() == wanted:
            return i
    if wanted.isdigit() and 1 <= int(wanted) <= count:
        return int(wanted) - 1
    present = ", ".join(f"{i + 1}={n}" if n else str(i + 1) for i, n in enumerate(
        (names + [None] * count)[:count]))
    raise DecodeError(f"channel {channel!r} is not in this {fmt}; channels present: {present}", permanent=True)
