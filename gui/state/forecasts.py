"""The well forecast's line in the plate map's hover text (pure: strings from plain rows)."""

from __future__ import annotations

from nscmonitor.store.forecasts import ForecastCell


def forecast_note(cells: dict[tuple[str, int], ForecastCell], well: str, time_key: int | None) -> str:
    """What the time-aware well model forecast for ``well`` at this time, from how many time
    points; empty when there is no forecast (no forecast model, or no induction scan yet)."""
    cell = cells.get((well, time_key)) if time_key is not None else None
    if cell is None:
        return ""
    best = max(range(len(cell.probs)), key=lambda k: cell.probs[k])
    probs = " ".join(f"{c} {p:.2f}" for c, p in zip(cell.classes, cell.probs))
    return (f"<br>well forecast ({cell.model_version}, from {cell.n_timepoints} time points up to now): "
            f"<b>{cell.classes[best]}</b> — {probs}")
