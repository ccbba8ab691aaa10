"""Retraining the well forecast model beside the tile model, when the lab serves one.

The retrain run's labelled images (the test wells held out by plate) feed ``nscmonitor
train-forecast`` in a lower-priority subprocess (torch stays out of the daemon), which also
reads the forecast model serving now on the same held-out wells. Each image's features are the
ones the daemon stored when it scored it (``frame_features``): the candidate learns from
exactly what it will be served, and a months-long store is not read again; only images scored
before the forecast was configured are read and computed. So the candidate keeps the serving
model's tile size and pixel size.

The candidate is installed (``registry.forecasts``) when its held-out accuracy, averaged over
the hours, is at least the serving model's (the tile gate's tolerance); with nothing comparable
serving, it must beat chance by the tile gate's first-model margin. Either way the run records
both figures; the daemon switches between batches, and ``nscmonitor models forecast
--rollback`` undoes it. The tile model's decision never depends on this step, and a failure
here is recorded, not raised.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from nscmonitor.config import Settings
from nscmonitor.core.errors import UserFacingError
from nscmonitor.core.names import to_db
from nscmonitor.registry import forecasts as FR
from nscmonitor.schedule.gates import FIRST_MARGIN, TOLERANCE

log = logging.getLogger(__name__)

#: a forecast training that takes longer is stopped (it takes seconds to minutes)
FORECAST_TIMEOUT_S = 3600.0


def forecast_decision(candidate: dict[str, Any], compared: dict[str, Any] | None,
                      n_classes: int) -> tuple[bool, str]:
    """(install?, why) from ``train_forecast``'s figures: the candidate's mean held-out
    accuracy against the serving model's on the same wells."""
    mean = candidate.get("mean_accuracy")
    if mean is None:
        return False, "the forecast candidate has no held-out wells to be judged on"
    if compared and compared.get("usable"):
        other = compared["mean_accuracy"]
        ok = mean + TOLERANCE >= other
        return ok, (f"forecast held-out accuracy (mean over hours, {candidate.get('wells')} wells) {mean:.3f} "
                    f"{'>=' if ok else '<'} {compared.get('version')} {other:.3f}")
    floor = 1.0 / max(n_classes, 1) + FIRST_MARGIN
    ok = mean >= floor
    why = f"; the serving forecast is not comparable ({compared['why']})" if compared else ""
    return ok, (f"forecast held-out accuracy (mean over hours) {mean:.3f} {'>=' if ok else '<'} chance + "
                f"{FIRST_MARGIN} = {floor:.3f}{why}")


def serving_geometry(path: Path | None, fallback: tuple[int | None, float | None]) -> tuple[str, int | None,
                                                                                            float | None]:
    """(scheme, tile px, pixel size in µm) of the serving forecast, so the candidate answers the
    same question on the same features; ``fallback`` (the tile model's) when it cannot load."""
    from nscmonitor.scoring.forecast import load_forecast_model

    if path is None:
        return "multiclass", *fallback
    try:
        meta = load_forecast_model(path).meta
    except Exception as exc:  # an unloadable file: the comparison will say so too
        log.warning("serving forecast %s unreadable (%s): the candidate is trained multiclass", path, exc)
        return "multiclass", *fallback
    return str(meta.get("scheme") or "multiclass"), int(meta.get("tile_px") or 128), meta.get("pixel_size_um")


def retrain_forecast(settings: Settings, engine, samples: list, run_dir: Path, run_id: int, *,  # noqa: ANN001
                     fallback: tuple[int | None, float | None] = (None, None),
                     timeout: float | None = FORECAST_TIMEOUT_S) -> dict[str, Any]:
    """Train, judge and maybe install a forecast candidate on ``samples`` (``retrain.Sample``)
    and the features stored for them; returns what the run records (``numbers["forecast"]``):
    status installed | rejected | failed, the reason, the figures."""
    import numpy as np

    from nscmonitor.schedule.retrain import lowered_subprocess, write_dataset
    from nscmonitor.scoring import well_sequence as WS
    from nscmonitor.store.forecasts import stored_features

    try:
        serving = FR.served(settings.models_dir, settings.forecast_model)
    except UserFacingError as exc:
        return {"status": "failed", "reason": str(exc)}
    scheme, tile_px, pixel_um = serving_geometry(serving, fallback)
    data = run_dir / "forecast-data"
    write_dataset(samples, data, tile_size=tile_px, pixel_size_um=pixel_um)
    stored = stored_features(engine, [to_db(smp.path) for smp in samples], WS.STORED)
    version = f"forecast-run-{run_id:04d}"
    out = run_dir / "forecast"
    argv = [sys.executable, "-m", "nscmonitor", "train-forecast", "--data", str(data), "--out", str(out),
            "--epochs", str(settings.retrain.forecast_epochs), "--version", version, "--scheme", scheme]
    if stored:  # none where every image was scored before the forecast was configured: all are read
        feats = run_dir / "forecast-features.npz"
        np.savez(feats, paths=np.asarray(list(stored), dtype=str), values=np.asarray(list(stored.values()), np.float64))
        argv += ["--features", str(feats)]
    if serving is not None:
        argv += ["--compare", str(serving)]
    rc, tail = lowered_subprocess(argv, threads=settings.retrain.threads, timeout=timeout,
                                  log_path=run_dir / "forecast.log")
    figures = out / "forecast_metrics.json"
    if rc != 0 or not figures.is_file() or not (out / "forecast.onnx").is_file():
        why = "killed (time limit or signal)" if rc < 0 else f"exited with code {rc}"
        return {"status": "failed", "reason": f"forecast training {why}; see {run_dir / 'forecast.log'}: "
                f"{tail.strip()[-300:]}"}
    metrics = json.loads(figures.read_text())
    compared = metrics.get("compared")
    ok, reason = forecast_decision(metrics, compared, _n_classes(out))
    record = {"version": version, "reason": reason, "stored_features": metrics.get("stored_features"),
              "candidate": {"mean_accuracy": metrics.get("mean_accuracy"), "wells": metrics.get("wells"),
                            "per_hour": metrics.get("per_hour")},
              "serving": compared}
    if not ok:
        return {"status": "rejected", **record}
    FR.install(settings.models_dir, out / "forecast.onnx", version, reason)
    return {"status": "installed", **record}


def _n_classes(out: Path) -> int:
    from nscmonitor.scoring.forecast import load_forecast_model

    return len(load_forecast_model(out / "forecast.onnx").meta["classes"])
