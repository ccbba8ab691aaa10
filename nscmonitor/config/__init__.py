"""One Settings object: TOML file -> environment (``NSCMONITOR_*``) -> CLI flags,
validated once at start. Everything downstream receives plain values from it.

Errors name the offending key (``watch[2].plate_format``), because the person reading them
is a facility engineer editing a file, not a developer reading a traceback.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import platformdirs

from nscmonitor.config.database import check_database_url, with_password_file
from nscmonitor.config.values import expect as _expect
from nscmonitor.config.values import finite_everywhere as _finite_everywhere
from nscmonitor.config.values import induction_time as _time
from nscmonitor.readers.decode import PIXEL_SIZE_RANGE_UM
from nscmonitor.core.selection import Z_ALL, norm_z
from nscmonitor.core.domain import PLATE_SHAPES
from nscmonitor.core.errors import ConfigError
from nscmonitor.intake.profiles import BY_NAME, CustomProfileSpec
from nscmonitor.core.limits import DEFAULT_MAX_PIXELS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

APP = "nscmonitor"
ENGINES = ("auto", "trt", "torch-cuda", "ort-cuda", "openvino-int8", "ort-int8", "openvino-bf16", "ort-cpu", "torch")


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir(APP)) / "config.toml"


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP))


def default_log_dir() -> Path:
    return Path(platformdirs.user_log_dir(APP))


@dataclass(frozen=True)
class WatchFolder:
    path: Path
    experiment: str
    profile: str = "auto"
    plate: str | None = None
    plate_format: int = 96
    plate_map: Path | None = None
    induction_time: datetime | None = None
    polling: bool | None = None  # None = auto (on for network shares)
    quiet_seconds: float = 5.0
    rescan_interval: float = 60.0
    channel: str | None = None
    #: which z planes are scored: ``all``, ``projection`` (images whose name gives no z index:
    #: ImageXpress's projection beside its ZStep folders) or a plane number (``core.selection``)
    z: str = "all"
    #: micrometres per pixel of this folder's files where a file does not state its own (many
    #: exports carry none, ``readers.decode.PIXEL_SIZE_SOURCES``): with it the daemon resamples to the
    #: model's pixel size and flags another magnification, as for a file that states it
    pixel_size_um: float | None = None

    def use_polling(self) -> bool:
        return self.polling if self.polling is not None else is_network_path(self.path)


@dataclass(frozen=True)
class RetrainSettings:
    schedule: str = "cron:0 2 * * *"
    threads: int = 1
    device: str = "auto"  # training's: cuda when torch sees a GPU, else cpu
    epochs: int = 10
    rescore: bool = False
    hook: str | None = None
    #: a candidate whose engine (int8 / TensorRT) fails its gate here is not promoted; false lets
    #: it be promoted all the same and served in fp32
    require_engine: bool = True
    #: training processes (DistributedDataParallel through torchrun); they share ``threads``
    nproc: int = 1
    #: extra training settings (arch, image_size, lr, ...), checked by the trainer
    train: dict = field(default_factory=dict)
    #: with a ``forecast_model`` configured, each retrain also retrains the well forecast on
    #: the same labelled wells and installs it when it reads the held-out wells as well
    forecast: bool = True
    #: full-batch epochs of the forecast's training (the best on validation is kept)
    forecast_epochs: int = 300


@dataclass(frozen=True)
class Settings:
    database_url: str
    models_dir: Path
    log_dir: Path
    model: Path | None = None
    #: the time-aware well model (ONNX, ``nscmonitor.training.temporal``): a second scoring
    #: stage that stores a forecast per well and time beside the readouts; None: not run
    forecast_model: Path | None = None
    engine: str = "auto"
    batch_size: int = 8
    threads: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: how long a daemon's claim on an image holds without renewal, on a PostgreSQL database
    #: shared by several daemons (a killed daemon's images go back to the queue after it)
    lease_seconds: float = 60.0
    #: a frame with less than this share of the fine detail of its field's nearest frames in
    #: time fails QC as out of focus (``scoring.qc.focus_check``); 0 switches the check off
    min_focus_ratio: float = 0.4
    watch: tuple[WatchFolder, ...] = ()
    custom_profiles: tuple[CustomProfileSpec, ...] = ()
    retrain: RetrainSettings = field(default_factory=RetrainSettings)
    source: Path | None = None


def is_network_path(path: Path) -> bool:
    """UNC paths and NFS/CIFS/SMB mounts deliver no reliable change events."""
    s = str(path)
    if s.startswith("\\\\") or s.startswith("//"):
        return True
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return False
    best, fstype = "", ""
    resolved = str(Path(s).resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3 and (resolved == parts[1] or resolved.startswith(parts[1].rstrip("/") + "/")):
            if len(parts[1]) > len(best):
                best, fstype = parts[1], parts[2]
    return fstype in {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "davfs"}


MAX_QUIET_S = 86400.0
MAX_RESCAN_S = 86400.0
CUSTOM_KEYS = ("name", "regex", "target", "index_base", "sidecars")


def _custom_profile(i: int, c: Any) -> CustomProfileSpec:
    where = f"custom_profiles[{i}]."
    if not isinstance(c, dict):
        raise ConfigError(f"custom_profiles[{i}]: expected a table ([[custom_profiles]])")
    for k in c:
        if k not in CUSTOM_KEYS:
            raise ConfigError(f"{where}{k}: unknown key (known: {', '.join(CUSTOM_KEYS)})")
    name = _expect(c, "name", str, where)
    regex = _expect(c, "regex", str, where)
    if not name or not regex:
        raise ConfigError(f"{where}: needs 'name' and 'regex' (text)")
    target = _expect(c, "target", str, where, "name")
    if target not in ("name", "path"):
        raise ConfigError(f"{where}target: must be \"name\" or \"path\", got {target!r}")
    sidecars = _expect(c, "sidecars", list, where, [])
    if not all(isinstance(x, str) for x in sidecars):
        raise ConfigError(f"{where}sidecars: expected a list of texts, got {sidecars!r}")
    spec = CustomProfileSpec(name, regex, target, _expect(c, "index_base", int, where, 1), tuple(sidecars))
    try:
        from nscmonitor.intake.profiles import custom_profile

        custom_profile(spec)
    except ValueError as exc:
        raise ConfigError(f"{where}regex: {exc}") from exc
    return spec


def _watch(i: int, d: dict, base: Path) -> WatchFolder:
    where = f"watch[{i}]."
    if not isinstance(d, dict):
        raise ConfigError(f"watch[{i}]: expected a table")
    known = set(WatchFolder.__dataclass_fields__)
    for k in d:
        if k not in known:
            raise ConfigError(f"{where}{k}: unknown key (known: {', '.join(sorted(known))})")
    path = _expect(d, "path", str, where)
    if not path:
        raise ConfigError(f"{where}path: required")
    exp = _expect(d, "experiment", str, where) or Path(path).name
    profile = _expect(d, "profile", str, where, "auto")
    if profile != "auto" and profile not in BY_NAME and not profile.startswith("custom:"):
        raise ConfigError(f"{where}profile: unknown profile {profile!r} (known: auto, {', '.join(BY_NAME)}, custom:<name>)")
    fmt = _expect(d, "plate_format", int, where, 96)
    if fmt not in PLATE_SHAPES:
        raise ConfigError(f"{where}plate_format: must be one of {sorted(PLATE_SHAPES)}, got {fmt}")
    pm = _expect(d, "plate_map", str, where)
    polling = d.get("polling", "auto")
    if polling not in ("auto", True, False):
        raise ConfigError(f"{where}polling: must be true, false or \"auto\", got {polling!r}")
    quiet = _expect(d, "quiet_seconds", float, where, 5.0)
    if not 0 <= quiet <= MAX_QUIET_S:
        raise ConfigError(f"{where}quiet_seconds: must be 0..{MAX_QUIET_S:.0f} seconds, got {quiet}")
    rescan = _expect(d, "rescan_interval", float, where, 60.0)
    if not 0 < rescan <= MAX_RESCAN_S:
        raise ConfigError(f"{where}rescan_interval: must be > 0 and <= {MAX_RESCAN_S:.0f} seconds, got {rescan}")
    ch = d.get("channel")
    try:
        z = norm_z(d.get("z", Z_ALL))
    except ValueError as exc:
        raise ConfigError(f"{where}z: {exc}") from None
    um = _expect(d, "pixel_size_um", float, where)
    if um is not None and not PIXEL_SIZE_RANGE_UM[0] <= um <= PIXEL_SIZE_RANGE_UM[1]:
        raise ConfigError(f"{where}pixel_size_um: must be {PIXEL_SIZE_RANGE_UM[0]:g}..{PIXEL_SIZE_RANGE_UM[1]:g} "
                          f"micrometres per pixel, got {um}")
    return WatchFolder(
        path=(base / path) if not Path(path).is_absolute() and not path.startswith("\\\\") else Path(path),
        experiment=exp, profile=profile, plate=_expect(d, "plate", str, where), plate_format=fmt,
        plate_map=(base / pm) if pm else None, induction_time=_time(d.get("induction_time"), where),
        polling=None if polling == "auto" else bool(polling), quiet_seconds=quiet, rescan_interval=rescan,
        channel=None if ch is None else str(ch), z=z, pixel_size_um=um,
    )


ENV_KEYS = {
    "NSCMONITOR_DATABASE_URL": "database_url", "NSCMONITOR_DATABASE_PASSWORD_FILE": "database_password_file",
    "NSCMONITOR_MODELS_DIR": "models_dir",
    "NSCMONITOR_MODEL": "model", "NSCMONITOR_ENGINE": "engine", "NSCMONITOR_BATCH_SIZE": "batch_size",
    "NSCMONITOR_THREADS": "threads", "NSCMONITOR_LOG_DIR": "log_dir", "NSCMONITOR_MAX_PIXELS": "max_pixels",
}
TOP_KEYS = {"database_url", "database_password_file", "models_dir", "log_dir", "model", "forecast_model", "engine", "batch_size", "threads", "max_pixels",
            "lease_seconds", "min_focus_ratio", "watch", "custom_profiles", "retrain"}


def _with_env(data: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """The file's top-level keys checked, then the ``NSCMONITOR_*`` variables laid over them."""
    data = dict(data)
    for k in data:
        if k not in TOP_KEYS:
            raise ConfigError(f"{k}: unknown key (known: {', '.join(sorted(TOP_KEYS))})")
    for var, key in ENV_KEYS.items():
        if env.get(var):
            v: Any = env[var]
            if key in ("batch_size", "threads", "max_pixels"):
                try:
                    v = int(v)
                except ValueError as exc:
                    raise ConfigError(f"{var} (= {key}): expected an integer, got {env[var]!r}") from exc
            data[key] = v
    return data


def _database_url(data: dict[str, Any], base: Path, data_dir: Path) -> str:
    db = check_database_url(_expect(data, "database_url", str, "", f"sqlite:///{data_dir / 'nscmonitor.db'}"))
    pw_file = _expect(data, "database_password_file", str, "", None)
    if pw_file:
        db = with_password_file(db, Path(pw_file) if Path(pw_file).is_absolute() else base / pw_file)
    return db


def _scoring_values(data: dict[str, Any]) -> dict[str, Any]:
    """The engine, batch, thread, image-size, lease and focus settings, as keyword arguments of Settings."""
    engine = _expect(data, "engine", str, "", "auto")
    if engine not in ENGINES:
        raise ConfigError(f"engine: must be one of {', '.join(ENGINES)}, got {engine!r}")
    bs = _expect(data, "batch_size", int, "", 8)
    if not 1 <= bs <= 1024:
        raise ConfigError(f"batch_size: must be 1..1024, got {bs}")
    threads = _expect(data, "threads", int, "", 0)
    if threads < 0:
        raise ConfigError("threads: must be >= 0 (0 = all cores)")
    max_px = _expect(data, "max_pixels", int, "", DEFAULT_MAX_PIXELS)
    if max_px <= 0:
        raise ConfigError(f"max_pixels: must be a positive number of pixels, got {max_px}")
    lease_s = _expect(data, "lease_seconds", float, "", 60.0)
    if not 2.0 <= lease_s <= 86400.0:
        raise ConfigError(f"lease_seconds: must be 2..86400 seconds, got {lease_s}")
    focus = _expect(data, "min_focus_ratio", float, "", 0.4)
    if not 0.0 <= focus < 1.0:
        raise ConfigError(f"min_focus_ratio: must be 0 (no focus check) up to below 1 (the share of its field's "
                          f"fine detail a frame must keep), got {focus}")
    return {"engine": engine, "batch_size": bs, "threads": threads, "max_pixels": max_px, "lease_seconds": lease_s,
            "min_focus_ratio": focus}


def _retrain(rt: Any) -> RetrainSettings:
    if not isinstance(rt, dict):
        raise ConfigError("retrain: expected a table")
    unknown = set(rt) - set(RetrainSettings.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"retrain.{sorted(unknown)[0]}: unknown key")
    sched = _expect(rt, "schedule", str, "retrain.", RetrainSettings.schedule)
    if not re.match(r"^(cron:\S+( \S+){4}|interval:\d+(\.\d+)?[smhd])$", sched):
        raise ConfigError(f"retrain.schedule: expected 'cron:M H DOM MON DOW' or 'interval:<n>[smhd]', got {sched!r}")
    rthreads = _expect(rt, "threads", int, "retrain.", 1)
    epochs = _expect(rt, "epochs", int, "retrain.", 10)
    if rthreads < 0 or epochs < 1:
        raise ConfigError(f"retrain.threads must be >= 0 and retrain.epochs >= 1, got {rthreads} and {epochs}")
    forecast_epochs = _expect(rt, "forecast_epochs", int, "retrain.", 300)
    if forecast_epochs < 1:
        raise ConfigError(f"retrain.forecast_epochs must be 1 or more, got {forecast_epochs}")
    nproc = _expect(rt, "nproc", int, "retrain.", 1)
    device = _expect(rt, "device", str, "retrain.", "auto")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ConfigError(f"retrain.device must be auto, cpu or cuda (cuda:N for one GPU), got {device!r}")
    if nproc < 1:
        raise ConfigError(f"retrain.nproc must be 1 or more training processes, got {nproc}")
    return RetrainSettings(
        schedule=sched, threads=rthreads, nproc=nproc,
        device=device, epochs=epochs,
        rescore=_expect(rt, "rescore", bool, "retrain.", False), hook=_expect(rt, "hook", str, "retrain.", None),
        require_engine=_expect(rt, "require_engine", bool, "retrain.", True),
        train=_expect(rt, "train", dict, "retrain.", {}),
        forecast=_expect(rt, "forecast", bool, "retrain.", True), forecast_epochs=forecast_epochs,
    )


def _check_custom_profiles_defined(folders: tuple[WatchFolder, ...], customs: list[CustomProfileSpec]) -> None:
    defined = {c.name for c in customs}
    for i, w in enumerate(folders):
        name = w.profile.split(":", 1)[1] if w.profile.startswith("custom:") else None
        if name is not None and name not in defined:
            raise ConfigError(f"watch[{i}].profile: custom profile {name!r} is not defined (defined: "
                              f"{', '.join(sorted(defined)) or 'none'}; add a [[custom_profiles]] table with "
                              f"name = {name!r})")


def parse_settings(data: dict[str, Any], *, base: Path | None = None, env: dict[str, str] | None = None,
                   source: Path | None = None) -> Settings:
    base = base or Path.cwd()
    data = _with_env(data, dict(os.environ) if env is None else env)
    _finite_everywhere(data, "")
    data_dir = default_data_dir()
    db = _database_url(data, base, data_dir)
    scoring = _scoring_values(data)
    watch = data.get("watch", [])
    if not isinstance(watch, list):
        raise ConfigError("watch: expected an array of tables ([[watch]])")
    cps = data.get("custom_profiles", [])
    if not isinstance(cps, list):
        raise ConfigError("custom_profiles: expected an array of tables ([[custom_profiles]])")
    customs = [_custom_profile(i, c) for i, c in enumerate(cps)]
    retrain = _retrain(data.get("retrain", {}))
    model = _expect(data, "model", str, "")
    forecast = _expect(data, "forecast_model", str, "")
    folders = tuple(_watch(i, w, base) for i, w in enumerate(watch))
    _check_custom_profiles_defined(folders, customs)
    return Settings(
        database_url=db,
        models_dir=Path(_expect(data, "models_dir", str, "", str(data_dir / "models"))),
        log_dir=Path(_expect(data, "log_dir", str, "", str(default_log_dir()))),
        model=Path(model) if model else None, forecast_model=Path(forecast) if forecast else None,
        watch=folders, custom_profiles=tuple(customs), retrain=retrain, source=source, **scoring,
    )


def load_settings(path: str | Path | None = None, *, env: dict[str, str] | None = None, required: bool = False) -> Settings:
    """Read the TOML file (the default one may be absent: defaults apply)."""
    explicit = path is not None
    p = Path(path) if path else default_config_path()
    data: dict[str, Any] = {}
    if p.is_file():
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r}); "
                              "save the file as UTF-8") from exc
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read the configuration file: {exc.strerror or exc}") from exc
    elif p.exists():
        raise ConfigError(f"{p}: the configuration must be a TOML file, not a folder")
    elif explicit or required:
        raise ConfigError(f"configuration file not found: {p}")
    return parse_settings(data, base=p.parent if p.is_file() else Path.cwd(), env=env,
                          source=p if p.is_file() else None)


def with_overrides(s: Settings, **kw: Any) -> Settings:
    """CLI flags win over file and environment; None means 'not given'."""
    return replace(s, **{k: v for k, v in kw.items() if v is not None})
