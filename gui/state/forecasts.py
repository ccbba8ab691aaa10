"""The well forecast as the dashboard shows it (pure: strings and arrays from plain rows): a line
in the plate map's hover text, the plate map coloured by a forecast class, and dashed curves in
the selected wells' time course."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nscmonitor.gui.state.readouts import Metric
from nscmonitor.store.forecasts import ForecastCell

FORECAST_KEY = "forecast:"


def forecast_note(cells: dict[tuple[str, int], ForecastCell], well: str, time_key: int | None) -> str:
    """What the time-aware well model forecast for ``well`` at this time, from how many time
    points; empty when there is no forecast (no forecast model, or no induction scan yet)."""
    cell = cells.get((well, time_key)) if time_key is not None else None
    if cell is None:
        return ""
    best = max(range(len(cell.probs)), key=lambda k: cell.probs[k])
    probs = " ".join(f"{c} {p:.2f}" for c, p in zip(cell.classes, cell.probs))
    if cell.ood is None:
        flag = "<br>out-of-distribution flag unavailable for this forecast model"
    elif cell.ood:
        flag = (f"<br><b>⚠ forecast flagged</b>: it rests on frames unlike the forecast model's training images "
                f"({cell.n_ood} frame(s) flagged up to now); left out of calls")
    else:
        flag = ""
    return (f"<br>well forecast ({cell.model_version}, from {cell.n_timepoints} time points up to now): "
            f"<b>{cell.classes[best]}</b> — {probs}{flag}")


@dataclass(frozen=True)
class ForecastSeries:
    """The selected wells' forecast per time point of the plate: ``probs`` is T x K (NaN where
    none of the wells has a forecast at that time), ``n_wells`` how many wells each mean holds."""

    model_version: str
    classes: tuple[str, ...]
    probs: np.ndarray
    n_wells: np.ndarray


def forecast_series(cells: dict[tuple[str, int], ForecastCell], wells: list[str],
                    time_keys: np.ndarray) -> ForecastSeries | None:
    """Mean forecast of ``wells`` at each of the plate's time keys, for the time course; None
    when none of them has any. The forecast's classes are its own (a binary forecast beside a
    multiclass tile model keeps its two), so the curves are named after them, not the cube's."""
    first = next((cells[(w, int(k))] for w in wells for k in time_keys if (w, int(k)) in cells), None)
    if first is None:
        return None
    classes, version = first.classes, first.model_version
    sums = np.zeros((len(time_keys), len(classes)))
    n = np.zeros(len(time_keys), dtype=int)
    for t, key in enumerate(time_keys):
        for w in wells:
            cell = cells.get((w, int(key)))
            if cell is not None and cell.classes == classes:
                sums[t] += cell.probs
                n[t] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        probs = np.where(n[:, None] > 0, sums / np.maximum(n, 1)[:, None], np.nan)
    return ForecastSeries(version, classes, probs, n)


def forecast_metrics(cells: dict[tuple[str, int], ForecastCell]) -> list[Metric]:
    """The plate map's choices for the forecast: one probability per class of the plate's
    forecast model (its own classes, which may differ from the tile model's); none without
    stored forecasts, so the metric list only offers what can be drawn."""
    classes = next((c.classes for c in cells.values()), ())
    return [Metric(f"{FORECAST_KEY}{c}", f"Well forecast P({c})", "probability", (0.0, 1.0)) for c in classes]


def forecast_at(cells: dict[tuple[str, int], ForecastCell], wells: list[str], time_key: int | None,
                key: str) -> np.ndarray:
    """Each well's forecast probability of the metric's class at this time (from the frames up
    to it); NaN where the well has no forecast then (no induction scan yet, or none stored), so
    the map shows 'no data' rather than a guess."""
    cls = key[len(FORECAST_KEY):]
    out = np.full(len(wells), np.nan)
    if time_key is None:
        return out
    for i, w in enumerate(wells):
        cell = cells.get((w, int(time_key)))
        if cell is not None and cls in cell.classes:
            out[i] = cell.probs[cell.classes.index(cls)]
    return out


def forecast_flagged(cells: dict[tuple[str, int], ForecastCell], wells: list[str], time_key: int | None) -> list[str]:
    """The wells whose forecast at this time is flagged by the forecast model's own
    out-of-distribution score (cross-hatched while the map is coloured by the forecast)."""
    if time_key is None:
        return []
    return [w for w in wells if (cell := cells.get((w, int(time_key)))) is not None and cell.ood]


def flagged_forecasts(cells: dict[tuple[str, int], ForecastCell]) -> int:
    """Forecasts of the plate (wells x times) that are flagged, for the banner."""
    return sum(bool(c.ood) for c in cells.values())


def serving_line(state: dict | None) -> str:
    """The models panel's line on the well forecast (``ops.health.forecast_state``)."""
    if state is None:
        return "No well forecast is configured (the forecast_model setting)."
    if state.get("problem"):
        return f"Well forecast: <b>{state['problem']}</b>"
    if state.get("version"):
        line = (f"Well forecast: <b>{state['version']}</b>, installed by retraining ({state['reason']}); "
                f"{state['installed_by_retraining']} version(s) installed over the configured file.")
    else:
        line = f"Well forecast: the configured file {state['configured']}."
    ood = state.get("ood") or {}
    if ood.get("available"):
        return line + f" Its out-of-distribution flag: threshold {ood['threshold']:.3g}."
    if ood:
        return line + f" Its out-of-distribution flag is <b>unavailable</b>: {ood['why']}."
    return line
