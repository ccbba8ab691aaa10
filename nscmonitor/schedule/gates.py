"""Promotion gates: pure functions of two models' predictions on the same held-out set.

A candidate is promoted only if, on the same held-out wells, it
* matches or beats the active model's balanced accuracy (minus ``TOLERANCE``),
* matches or beats its accuracy from 24 h after induction on (the readout labs act on), and
* lets no class's recall collapse. Recall alone rewards calling everything one class (a
  weak model that says "astrocyte" for every image has astrocyte recall 1.0), so the rule
  uses recall corrected for false alarms, Youden's J = recall + specificity - 1: a class
  collapses when the candidate's J falls below half of the active model's and more than
  0.2 below it. Balanced accuracy can rise while a rare class (oligodendrocytes) vanishes;
  this catches that.
Without an active model, the candidate must beat chance by ``FIRST_MARGIN`` in balanced
accuracy, so an untrained run cannot become the first active model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TOLERANCE = 0.005
FIRST_MARGIN = 0.10
EARLY_H = 24.0


@dataclass(frozen=True)
class EvalResult:
    classes: tuple[str, ...]
    n: int
    accuracy: float
    balanced_accuracy: float
    accuracy_from_24h: float | None
    recall: dict[str, float]
    by_time: dict[str, float] = field(default_factory=dict)
    youden: dict[str, float] = field(default_factory=dict)


TIME_BINS = ((0, 12), (12, 24), (24, 48), (48, 72), (72, 1e9))


def evaluate_predictions(y_true: list[str], y_pred: list[str], elapsed_h: list[float | None],
                         classes: tuple[str, ...]) -> EvalResult:
    yt, yp = np.array(y_true), np.array(y_pred)
    present = [c for c in classes if (yt == c).any()]
    recall = {c: float((yp[yt == c] == c).mean()) for c in present}
    youden = {c: recall[c] + (float((yp[yt != c] != c).mean()) if (yt != c).any() else 1.0) - 1.0 for c in present}
    acc = float((yt == yp).mean()) if len(yt) else float("nan")
    bal = float(np.mean(list(recall.values()))) if recall else float("nan")
    eh = np.array([np.nan if e is None else e for e in elapsed_h], dtype=float)
    late = eh >= EARLY_H
    acc24 = float((yt[late] == yp[late]).mean()) if late.any() else None
    by_time = {}
    for lo, hi in TIME_BINS:
        sel = (eh >= lo) & (eh < hi)
        if sel.any():
            by_time[f"{lo:g}-{hi:g}h" if hi < 1e8 else f"{lo:g}h+"] = float((yt[sel] == yp[sel]).mean())
    return EvalResult(tuple(classes), len(yt), acc, bal, acc24, recall, by_time, youden)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str]


def decide(candidate: EvalResult, active: EvalResult | None) -> Decision:
    if active is None:
        floor = 1.0 / max(len(candidate.recall), 1) + FIRST_MARGIN
        ok = candidate.balanced_accuracy >= floor
        return Decision(ok, [f"no active model; balanced accuracy {candidate.balanced_accuracy:.3f} "
                             f"{'>=' if ok else '<'} chance + {FIRST_MARGIN} = {floor:.3f}"])
    reasons, ok = [], True
    if candidate.balanced_accuracy + TOLERANCE < active.balanced_accuracy:
        ok = False
        reasons.append(f"balanced accuracy {candidate.balanced_accuracy:.3f} < active {active.balanced_accuracy:.3f}")
    else:
        reasons.append(f"balanced accuracy {candidate.balanced_accuracy:.3f} >= active {active.balanced_accuracy:.3f}")
    if active.accuracy_from_24h is not None and candidate.accuracy_from_24h is not None:
        if candidate.accuracy_from_24h + TOLERANCE < active.accuracy_from_24h:
            ok = False
            reasons.append(f"accuracy from 24 h {candidate.accuracy_from_24h:.3f} < active {active.accuracy_from_24h:.3f}")
        else:
            reasons.append(f"accuracy from 24 h {candidate.accuracy_from_24h:.3f} >= active {active.accuracy_from_24h:.3f}")
    for c, j_act in active.youden.items():
        j = candidate.youden.get(c)
        if j is None:
            continue
        if j < 0.5 * j_act and j < j_act - 0.2:
            ok = False
            reasons.append(f"recall of {c} collapses: Youden's J {j:.3f} vs active {j_act:.3f} "
                           f"(recall {candidate.recall.get(c, 0):.3f} vs {active.recall.get(c, 0):.3f})")
    return Decision(ok, reasons)
