"""The on-disk format and cache of serialized TensorRT engines (no TensorRT needed here).

A TensorRT plan is tied to the GPU model, its compute capability and the TensorRT version
that built it; loading a foreign plan fails deep inside TensorRT or, worse, misbehaves. So a
plan never travels bare: the file is ``MAGIC | u32 header length | header JSON | plan``, where
the header carries the model metadata (house rule 9), the cache key it was built for, the
plan's SHA-256 and the validation gate result. Readers check all of it before a single plan
byte reaches TensorRT, and the cache treats any mismatch as "rebuild", never as "crash".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nscmonitor.engines.base import EngineError
from nscmonitor.engines.metadata import MetadataError, ModelMetadata

log = logging.getLogger(__name__)

MAGIC = b"NSCMTRT\x01"
HEADER_LIMIT = 16 * 1024 * 1024


class EngineFileError(EngineError):
    """The engine file is unreadable, truncated, corrupted or has no usable header."""


class EngineMismatchError(EngineError):
    """The engine file is intact but was built for another GPU, TensorRT or model."""


def move_aside(path: str | Path, reason: str) -> Path | None:
    """A cache file or folder that fails to load is renamed ``<name>.corrupt-<UTC time>``,
    never deleted silently: the daemon rebuilds it and goes on, and whoever investigates
    still has the bad copy. Returns the new name, or None when it could not be moved."""
    from datetime import datetime, timezone

    path = Path(path)
    dest = path.with_name(f"{path.name}.corrupt-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%fZ')}")
    try:
        os.replace(path, dest)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.error("%s failed to load (%s) and cannot be moved aside: %s", path, reason, exc)
        return None
    log.warning("%s failed to load (%s); moved aside to %s, it is rebuilt", path, reason, dest.name)
    return dest


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class EngineKey:
    """Everything a plan depends on. Two builds with equal keys are interchangeable."""

    gpu_name: str
    compute_capability: str
    trt_version: str
    onnx_sha256: str
    precision: str
    min_batch: int
    opt_batch: int
    max_batch: int
    # int8 plans are parsed from the explicitly quantised model beside the fp32 one: its hash
    # (empty for fp32/fp16). Files written before this field existed read as "".
    quantized_sha256: str = ""

    def digest(self) -> str:
        fields = asdict(self)
        if not fields["quantized_sha256"]:
            del fields["quantized_sha256"]  # fp32/fp16 engines keep the names they had before the field
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    def filename(self, stem: str) -> str:
        return f"{stem}.{self.precision}.{self.digest()[:16]}.engine"

    def mismatches(self, other: "EngineKey") -> list[str]:
        a, b = asdict(self), asdict(other)
        return [f"{k}: file has {b[k]!r}, here {a[k]!r}" for k in a if a[k] != b[k]]


@dataclass(frozen=True)
class EngineFile:
    key: EngineKey
    metadata: ModelMetadata
    plan: bytes
    gate: dict[str, Any] | None


def write_engine_file(path: str | Path, key: EngineKey, metadata: ModelMetadata, plan: bytes,
                      gate: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    header = json.dumps({
        "key": asdict(key),
        "metadata": json.loads(metadata.to_json()),
        "plan_sha256": hashlib.sha256(plan).hexdigest(),
        "plan_bytes": len(plan),
        "gate": gate,
    }, sort_keys=True).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    with open(tmp, "wb") as fh:
        fh.write(MAGIC)
        fh.write(struct.pack("<I", len(header)))
        fh.write(header)
        fh.write(plan)
    os.replace(tmp, path)
    return path


def read_engine_file(path: str | Path, expected: EngineKey | None = None) -> EngineFile:
    """Read and check an engine file; raise EngineFileError / EngineMismatchError with the
    whole reason rather than hand TensorRT anything doubtful."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EngineFileError(f"cannot read engine file {path}: {exc}") from exc
    if not data.startswith(MAGIC):
        raise EngineFileError(f"{path} is not an nscmonitor engine file (bad magic; a bare TensorRT "
                              "plan has no metadata and is refused)")
    if len(data) < len(MAGIC) + 4:
        raise EngineFileError(f"{path} is truncated")
    (n,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    if n > HEADER_LIMIT or start + n > len(data):
        raise EngineFileError(f"{path} is truncated or has a corrupt header length ({n})")
    try:
        header = json.loads(data[start:start + n].decode())
        key = EngineKey(**header["key"])
        metadata = ModelMetadata.from_dict(header["metadata"])
        plan_sha, plan_len = header["plan_sha256"], int(header["plan_bytes"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, MetadataError) as exc:
        raise EngineFileError(f"{path} has a corrupt header: {exc}") from exc
    plan = data[start + n:]
    if len(plan) != plan_len or hashlib.sha256(plan).hexdigest() != plan_sha:
        raise EngineFileError(f"{path}: plan is corrupted or truncated (checksum mismatch)")
    if expected is not None and key != expected:
        raise EngineMismatchError(f"{path} was built for another configuration: "
                                  + "; ".join(expected.mismatches(key)))
    return EngineFile(key, metadata, plan, header.get("gate"))


class EngineCache:
    """One folder of engine files named by their key. ``lookup`` returns a usable file or
    None; a corrupt or mismatched file is moved aside (``*.rejected``) with a log line so the
    next build replaces it and an operator can still inspect it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path_for(self, key: EngineKey, stem: str) -> Path:
        return self.root / key.filename(stem)

    def lookup(self, key: EngineKey, stem: str) -> Path | None:
        path = self.path_for(key, stem)
        if not path.exists():
            return None
        try:
            ef = read_engine_file(path, expected=key)
        except EngineError as exc:
            self._reject(path, str(exc))
            return None
        if not (ef.gate or {}).get("passed", False):
            self._reject(path, "engine file carries no passed validation gate")
            return None
        return path

    def _reject(self, path: Path, reason: str) -> None:
        log.warning("engine cache: discarding %s: %s (it will be rebuilt)", path, reason)
        os.replace(path, path.with_suffix(path.suffix + ".rejected"))

    def entries(self) -> list[tuple[Path, EngineFile | None, str]]:
        """Every engine file with its parsed content or the reason it is unusable."""
        out: list[tuple[Path, EngineFile | None, str]] = []
        for p in sorted(self.root.glob("*.engine")) if self.root.is_dir() else []:
            try:
                out.append((p, read_engine_file(p), "ok"))
            except EngineError as exc:
                out.append((p, None, str(exc)))
        return out
