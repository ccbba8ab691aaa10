"""Well calibration and the confident-call rule, fitted on the validation plate's wells and
judged on held-out plates as a biologist would use them.

The daemon reads wells, so calibration is fitted where users read: one temperature on the
log of each well's mean tile probability at each time point (``core.calibration``). The
call rule (threshold, persistence) is chosen on validation wells only: the rule with the
least risk of wrong calls (<= ``MAX_WRONG`` of the wells where any rule reaches it), then the
most wells called, the earliest median call, the lowest threshold. A rule's risk is the
larger of the wrong calls it made on validation and those its calls' own (calibrated)
probabilities predict, the sum over called wells of 1 - p at the call: one validation plate
holds a few dozen wells, and the most permissive rule that happens to call none of them
wrong is the one that fails on the next plate (measured in docs/training.md, "Well
calibration and confident calls"). Where no rule calls a validation well at that risk, the
strictest rule is kept: nothing on validation supports an earlier call. Test wells are only
ever scored with the rule chosen.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from nscmonitor.core.calibration import CallRule, WellCalibration
from nscmonitor.report.calls import confident_call
from nscmonitor.training.protocol import Readouts, well_timepoints

THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98)
MIN_POINTS = (1, 2, 3)
MAX_WRONG = 0.02


def fit_well_temperature(ro: Readouts) -> WellCalibration:
    """Minimise the NLL of the well readouts' truth under softmax(log p / T): the tile
    temperature fit with the log well means standing in for logits."""
    from nscmonitor.training.evaluate import fit_temperature

    return WellCalibration(fit_temperature(np.log(np.clip(ro.probs, 1e-12, None)), ro.y))


def calibrated(ro: Readouts, cal: WellCalibration | None) -> Readouts:
    return ro if cal is None else Readouts(cal.apply(ro.probs), ro.y, ro.well, ro.plate, ro.condition, ro.hours)


def series(ro: Readouts) -> list[dict[str, Any]]:
    """One time course per well (sorted by hours): probs T x K, hours, truth, condition."""
    rows: dict[str, list[int]] = defaultdict(list)
    for i, w in enumerate(ro.well.tolist()):
        rows[w].append(i)
    out = []
    for w, idx in sorted(rows.items()):
        idx = sorted(idx, key=lambda i: ro.hours[i])
        out.append({"well": w, "probs": ro.probs[idx], "hours": ro.hours[idx],
                    "y": int(np.bincount(ro.y[idx]).argmax()), "condition": str(ro.condition[idx[0]])})
    return out


def judge(wells: Sequence[dict[str, Any]], rule: CallRule, classes: Sequence[str]) -> dict[str, Any]:
    """Each well's earliest confident call under ``rule`` on its whole time course:
    wells, called, wrong (share of all wells), the wrong calls the calls' probabilities
    predict (sum of 1 - p at each call, share of all wells), median hours to a call (called
    wells)."""
    called, wrong, expected, hours = 0, 0, 0.0, []
    for w in wells:
        call = confident_call(w["probs"], w["hours"], tuple(classes), threshold=rule.threshold,
                              min_points=rule.min_points)
        if call is None:
            continue
        called += 1
        wrong += int(call.cls != classes[w["y"]])
        expected += 1.0 - call.probability
        hours.append(call.elapsed_h)
    n = len(wells)
    return {"wells": n, "called": called, "wrong": wrong, "wrong_frac": wrong / n if n else None,
            "expected_wrong_frac": expected / n if n else None,
            "called_frac": called / n if n else None,
            "median_h_to_call": float(np.median(hours)) if hours else None}


def choose_rule(wells: Sequence[dict[str, Any]], classes: Sequence[str]) -> tuple[CallRule, dict[str, Any]]:
    """The rule for validation ``wells`` (see the module docstring); (rule, its figures)."""
    best = None
    for thr in THRESHOLDS:
        for mp in MIN_POINTS:
            rule = CallRule(thr, mp)
            r = judge(wells, rule, classes)
            if r["wells"] == 0:
                continue
            median = r["median_h_to_call"] if r["median_h_to_call"] is not None else math.inf
            risk = max(r["wrong_frac"], r["expected_wrong_frac"], MAX_WRONG)
            strict = (thr, mp) if r["called"] else (-thr, -mp)  # calls nothing here: the strictest
            key = (risk, -r["called_frac"], median, *strict)
            if best is None or key < best[0]:
                best = (key, rule, r)
    if best is None:
        return CallRule(), {"wells": 0}
    return best[1], best[2]


def by_condition(wells: Sequence[dict[str, Any]], rule: CallRule, classes: Sequence[str]) -> dict[str, Any]:
    out = {"all": judge(wells, rule, classes)}
    for c in sorted({w["condition"] for w in wells}):
        out[c] = judge([w for w in wells if w["condition"] == c], rule, classes)
    return out


def fit_on_validation(probs: np.ndarray, y: np.ndarray, records: Sequence,
                      classes: Sequence[str]) -> tuple[WellCalibration, CallRule, dict[str, Any]]:
    """Temperature and call rule from the validation tiles (probabilities at the tile
    temperature); the figures they reached there."""
    ro = well_timepoints(probs, y, records)
    cal = fit_well_temperature(ro)
    rule, fig = choose_rule(series(calibrated(ro, cal)), classes)
    return cal, rule, {"wells": len(set(ro.well.tolist())), "readouts": len(ro.y), "calls": fig}


def held_out_calls(probs: np.ndarray, y: np.ndarray, records: Sequence, classes: Sequence[str],
                   cal: WellCalibration | None, rule: CallRule) -> dict[str, Any]:
    """The earliest confident call per held-out well under the stored rule, by condition."""
    ro = calibrated(well_timepoints(probs, y, records), cal)
    return {"rule": rule.record(), "by_condition": by_condition(series(ro), rule, classes)}


def ece_by_time(probs: np.ndarray, y: np.ndarray, records: Sequence, cal: WellCalibration | None) -> dict[str, Any]:
    """ECE per time bin at image level and at well level (one readout per well and time
    point), before and after the well calibration; n is images or well readouts."""
    from nscmonitor.training.evaluate import aggregate, bin_names, ece, ece_if_calibrated, time_bin

    out: dict[str, Any] = {}
    ip, iy, ih = aggregate(probs, y, records, "image")
    ro = well_timepoints(probs, y, records)
    wc = calibrated(ro, cal).probs
    ibins = np.asarray([time_bin(h) for h in ih])
    wbins = np.asarray([time_bin(None if math.isnan(h) else h) for h in ro.hours])
    for b in [*bin_names(), "all"]:
        mi = np.ones(len(iy), bool) if b == "all" else ibins == b
        mw = np.ones(len(ro.y), bool) if b == "all" else wbins == b
        if not mw.any():
            continue
        out[b] = {"images": int(mi.sum()), "image_ece": ece(ip[mi], iy[mi])[0] if mi.any() else None,
                  "well_readouts": int(mw.sum()), "well_ece": ece(ro.probs[mw], ro.y[mw])[0],
                  "well_ece_calibrated": ece(wc[mw], ro.y[mw])[0],
                  "well_ece_if_calibrated": ece_if_calibrated(wc[mw].max(axis=1))}
    return out


def ece_table(rows: dict[str, Any]) -> str:
    """The last column is what a perfectly calibrated model with the same well confidences
    would score on as many readouts (median, 95th percentile): a calibrated ECE inside it is
    as good as these readouts can show."""
    out = ["| time bin | images | image ECE | well readouts | well ECE (mean of tiles) | well ECE (calibrated) | "
           "well ECE of a perfectly calibrated model, same n (median / 95th pct) |",
           "|---|---|---|---|---|---|---|"]
    for b, r in rows.items():
        img = "-" if r["image_ece"] is None else f"{r['image_ece']:.3f}"
        floor = r.get("well_ece_if_calibrated")  # absent in reports written before it existed
        ref = f"{floor['median']:.3f} / {floor['p95']:.3f}" if floor else "-"
        out.append(f"| {b} | {r['images']} | {img} | {r['well_readouts']} | {r['well_ece']:.3f} | "
                   f"{r['well_ece_calibrated']:.3f} | {ref} |")
    return "\n".join(out)


def calls_table(calls: dict[str, Any]) -> str:
    rows = ["| condition | wells | called | wrong (share of wells) | median h to a call |", "|---|---|---|---|---|"]
    for c, r in calls["by_condition"].items():
        med = "-" if r["median_h_to_call"] is None else f"{r['median_h_to_call']:g}"
        rows.append(f"| {c} | {r['wells']} | {r['called']} | {r['wrong']} ({r['wrong_frac']:.2f}) | {med} |")
    return "\n".join(rows)
