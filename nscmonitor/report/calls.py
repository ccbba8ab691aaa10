"""When a well or a condition becomes a confident call, and the across-replicate statistics
behind a condition's curve. Pure numpy: the dashboard and the HTML report use the same rule,
the one the model whose readouts they show carries (chosen on its validation wells at
training, ``core.calibration.call_rule_of``), so a call means the same on screen, in the
report and in the model's own evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nscmonitor.core.calibration import CallRule, call_rule_of
from nscmonitor.core.errors import UserFacingError

DEFAULT_RULE = CallRule()


@dataclass(frozen=True)
class ConfidentCall:
    index: int  # time index of the call
    elapsed_h: float
    cls: str
    probability: float  # the top class's probability at the call
    early: bool  # made before EARLY_H: science reference §2.2 says treat such calls with caution


EARLY_H = 24.0


def confident_call(probs: np.ndarray, elapsed_h: np.ndarray, classes: tuple[str, ...], *,
                   threshold: float = DEFAULT_RULE.threshold, min_points: int = DEFAULT_RULE.min_points,
                   flagged: np.ndarray | None = None) -> ConfidentCall | None:
    """The earliest time from which the call holds: the first time point i such that at i
    and at *every* later time point with data the top class is the same class and its
    probability is at least ``threshold``, with at least ``min_points`` such time points
    (one last point alone is not yet 'stable'). ``probs`` is T x K (NaN rows = no data).
    None when the latest data do not support a confident call. ``flagged`` (T, counts or
    booleans) marks time points with images flagged out of distribution: their readouts mean
    nothing, so they count as no data (NaN or 0 for the flag unavailable: used as is)."""
    ok = np.isfinite(probs).all(axis=1)
    if flagged is not None:
        ok &= ~(np.nan_to_num(np.asarray(flagged, np.float64), nan=0.0) > 0)
    idx = np.flatnonzero(ok)
    if len(idx) < min_points:
        return None
    top = probs[idx].argmax(axis=1)
    pmax = probs[idx, top]
    last = top[-1]
    good = (top == last) & (pmax >= threshold)
    if not good[-1]:
        return None
    bad = np.flatnonzero(~good)
    start = bad[-1] + 1 if len(bad) else 0
    if len(idx) - start < min_points:
        return None
    i = int(idx[start])
    h = float(elapsed_h[i]) if np.isfinite(elapsed_h[i]) else float("nan")
    return ConfidentCall(i, h, classes[int(last)], float(pmax[start]), bool(np.isfinite(h) and h < EARLY_H))


@dataclass(frozen=True)
class RuleInUse:
    """The call rule shown with a plate's readouts and one line saying where it comes from."""

    rule: CallRule
    source: str
    from_model: bool

    def text(self) -> str:
        """How the rule reads in the dashboard and the report."""
        points = f"{self.rule.min_points} time point" + ("s" if self.rule.min_points != 1 else "")
        return f"top class P ≥ {self.rule.threshold:.2f} over at least {points} ({self.source})"


def rule_in_use(meta: dict[str, Any] | None, version: str | None) -> RuleInUse:
    """The call rule of model ``version`` from its registered metadata (``meta``, the
    ``ModelMetadata`` dict whose ``extra`` holds it); the default rule, saying so, when the
    model carries none, is unknown here or carries a malformed one (the readouts still show)."""
    if version is None:
        return RuleInUse(DEFAULT_RULE, "default rule: no model has scored these readouts", False)
    if meta is None:
        return RuleInUse(DEFAULT_RULE, f"default rule: model {version} is not in the registry", False)
    extra = meta.get("extra") if isinstance(meta.get("extra"), dict) else None
    if not extra or extra.get("call_rule") is None:
        return RuleInUse(DEFAULT_RULE, f"default rule: model {version} carries none", False)
    try:
        rule = call_rule_of(extra)
    except UserFacingError as exc:
        return RuleInUse(DEFAULT_RULE, f"default rule: {exc}", False)
    return RuleInUse(rule, f"chosen on the validation wells of model {version}", True)


def replicate_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, sample sd (0 with one replicate) and n across the last axis, ignoring NaN;
    ``values`` is T x R (time points x replicate wells), or T x R x K."""
    v = np.moveaxis(values, 1, -1)
    n = np.isfinite(v).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.nansum(v, axis=-1) / np.maximum(n, 1), np.nan)
        dev = np.where(np.isfinite(v), v - mean[..., None], 0.0)
        sd = np.where(n > 1, np.sqrt((dev ** 2).sum(axis=-1) / np.maximum(n - 1, 1)), np.where(n == 1, 0.0, np.nan))
    return mean, sd, n
