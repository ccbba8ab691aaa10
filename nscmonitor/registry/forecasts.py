"""Which well forecast model the daemon serves, when retraining has replaced the configured one.

The ``forecast_model`` setting names the file a lab starts with. A scheduled retraining whose
forecast candidate reads the held-out wells at least as well installs it under
``<models_dir>/forecast/<version>/forecast.onnx`` and points ``<models_dir>/forecast/active.json``
at it, keeping the versions it replaced; the daemon's second stage follows that pointer between
batches. Rolling back pops one entry, and with the last entry gone the configured file serves
again. A file pointer, not a table: the forecast is an optional second stage, and the tile
registry's rows already say which model is served; daemons sharing a database share the models
folder, as their registered paths require.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from nscmonitor.core.errors import UserFacingError

ACTIVE = "active.json"
#: the ONNX metadata key of a well forecast model (beside the tile model's ``nscmonitor``)
METADATA_KEY = "nscmonitor_forecast"


class ForecastFileError(UserFacingError):
    """The file is not a well forecast model; the message says why."""


def read_meta(path: str | Path) -> dict:
    """A forecast model file's metadata, without starting a session (status and the dashboard
    ask for it, the daemon's loader checks it)."""
    import onnx

    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # any parse error: the file is not a model
        raise ForecastFileError(f"{path}: not an ONNX model ({exc})") from exc
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in props:
        raise ForecastFileError(f"{path}: no {METADATA_KEY} metadata (not a well forecast model)")
    try:
        return json.loads(props[METADATA_KEY])
    except ValueError as exc:
        raise ForecastFileError(f"{path}: unreadable {METADATA_KEY} metadata ({exc})") from exc


def ood_state(path: Path) -> dict:
    """Whether a forecast model flags frames unlike its training images: its threshold and
    the share of held-out plates it flagged in training, or why not. Cached by the file's
    size and time, as the dashboard asks on every refresh."""
    try:
        st = Path(path).stat()
    except OSError as exc:
        return {"available": False, "why": f"cannot read {path} ({exc.strerror or exc})"}
    return _ood_state(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _ood_state(path: str, size: int, mtime_ns: int) -> dict:  # noqa: ARG001 (size and time: the cache key)
    try:
        meta = read_meta(path)
    except ForecastFileError as exc:
        return {"available": False, "why": str(exc), "not_a_forecast_model": True}
    rec, version = meta.get("ood"), meta.get("version")
    if not rec:
        return {"available": False, "version": version,
                "why": "the forecast model has no out-of-distribution record (trained before it had one): its "
                       "forecasts are never flagged"}
    return {"available": True, "version": version, "threshold": rec.get("threshold"),
            "flagged_held_out_plates": rec.get("flagged_held_out_plates"), "threshold_from": rec.get("threshold_from")}


@dataclass(frozen=True)
class ForecastVersion:
    version: str
    path: str
    reason: str
    installed_at: str


def forecast_dir(models_dir: Path) -> Path:
    return Path(models_dir) / "forecast"


def history(models_dir: Path) -> list[ForecastVersion]:
    """Installed versions, the served one last; empty when the configured file serves. A pointer
    that cannot be read is an error the user must see (serving the configured file instead
    would silently undo a promotion)."""
    p = forecast_dir(models_dir) / ACTIVE
    if not p.is_file():
        return []
    try:
        rows = json.loads(p.read_text(encoding="utf-8"))["history"]
        return [ForecastVersion(**r) for r in rows]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserFacingError(f"{p}: unreadable forecast pointer ({exc}); remove it to serve the configured "
                              "forecast_model again") from exc


def served(models_dir: Path, configured: Path | None) -> Path | None:
    """The file the daemon forecasts with: the last installed version, else the configured one;
    None when the lab configured no forecast (retraining never turns the stage on by itself)."""
    if configured is None:
        return None
    rows = history(models_dir)
    return Path(rows[-1].path) if rows else Path(configured)


def install(models_dir: Path, source: Path, version: str, reason: str) -> ForecastVersion:
    """Copy ``source`` into its version folder and make it the served forecast."""
    folder = forecast_dir(models_dir) / version
    if folder.exists():
        raise UserFacingError(f"forecast version {version} is already installed ({folder})")
    part = folder.with_name(folder.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    shutil.copy2(source, part / "forecast.onnx")
    os.replace(part, folder)
    row = ForecastVersion(version, str(folder / "forecast.onnx"), reason,
                          datetime.now(timezone.utc).isoformat(timespec="seconds"))
    _write(models_dir, history(models_dir) + [row])
    return row


def rollback(models_dir: Path) -> ForecastVersion | None:
    """Serve the version before the current one; None when that is the configured file."""
    rows = history(models_dir)
    if not rows:
        raise UserFacingError("no retrained forecast model is installed: the configured forecast_model already "
                              "serves")
    _write(models_dir, rows[:-1])
    return rows[-2] if len(rows) > 1 else None


def _write(models_dir: Path, rows: list[ForecastVersion]) -> None:
    p = forecast_dir(models_dir) / ACTIVE
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".part")
    tmp.write_text(json.dumps({"history": [asdict(r) for r in rows]}, indent=2), encoding="utf-8")
    os.replace(tmp, p)
