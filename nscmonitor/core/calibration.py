"""Well-level calibration: the probability a user reads on a well means what it says.

A well's readout is the mean of its tiles' probabilities. Each tile is calibrated on its own
(the model's temperature), but averaging many tiles of one well pulls the mean towards the
middle when tiles disagree and leaves it overconfident when they agree for the wrong
reason (a plate shift moves all tiles of a well together), so the mean is not calibrated
at well level. Training fits one more temperature on the validation plate's well readouts,
applied to the log of the well mean (the daemon stores probabilities, not logits):
``p_cal = softmax(log(p_mean) / T)``. It never changes which class is on top, only how
sure the readout says it is. A model whose metadata carries none reads as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from nscmonitor.core.errors import UserFacingError

#: where training writes them in ModelMetadata.extra
KEY = "well_calibration"
CALL_KEY = "call_rule"
METHOD = "temperature on log well-mean probability"


@dataclass(frozen=True)
class WellCalibration:
    temperature: float

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Calibrate well-mean probabilities (K, or N x K); rows sum to one."""
        p = np.asarray(probs, dtype=np.float64)
        z = np.log(np.clip(p, 1e-12, None)) / self.temperature
        z -= z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    def record(self, **fitted_on: Any) -> dict[str, Any]:
        return {"method": METHOD, "temperature": float(self.temperature), **fitted_on}


def well_calibration_of(extra: dict[str, Any] | None) -> WellCalibration | None:
    """The calibration in a model's metadata ``extra``; None when it has none. A malformed
    entry is refused (a readout silently left uncalibrated would look calibrated)."""
    entry = (extra or {}).get(KEY)
    if entry is None:
        return None
    try:
        t = float(entry["temperature"])
    except (TypeError, KeyError, ValueError) as exc:
        raise UserFacingError(f"model metadata {KEY} needs a numeric temperature, got {entry!r}") from exc
    if not (math.isfinite(t) and t > 0):
        raise UserFacingError(f"model metadata {KEY}: temperature must be a positive number, got {t}")
    return WellCalibration(t)


@dataclass(frozen=True)
class CallRule:
    """When a well's readout becomes a call (``report.calls.confident_call``): its top class
    holds at >= ``threshold`` from some time on, over at least ``min_points`` time points.
    The defaults are the rule used before models carried one chosen on their validation
    plate."""

    threshold: float = 0.6
    min_points: int = 2

    def record(self, **chosen_on: Any) -> dict[str, Any]:
        return {"threshold": float(self.threshold), "min_points": int(self.min_points), **chosen_on}


def call_rule_of(extra: dict[str, Any] | None) -> CallRule:
    """The call rule in a model's metadata ``extra``, or the default rule."""
    entry = (extra or {}).get(CALL_KEY)
    if entry is None:
        return CallRule()
    try:
        rule = CallRule(float(entry["threshold"]), int(entry["min_points"]))
    except (TypeError, KeyError, ValueError) as exc:
        raise UserFacingError(f"model metadata {CALL_KEY} needs threshold and min_points, got {entry!r}") from exc
    if not (0 < rule.threshold <= 1 and rule.min_points >= 1):
        raise UserFacingError(f"model metadata {CALL_KEY}: threshold in (0, 1] and min_points >= 1, got {entry!r}")
    return rule
