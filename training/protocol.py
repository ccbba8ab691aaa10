"""The evaluation protocol: figures over independent wells, with 95 % intervals, per time
bin, per test plate and pooled, and over several training seeds.

A well is the unit: its tiles and its time points are readouts of the same cells, so n is
the number of wells. Per time bin a well gives one readout (the mean probability over its
tiles and time points in the bin), which makes accuracy k of n wells with a Wilson
interval; balanced accuracy and the calibration error (ECE) get a bootstrap that draws
whole wells (``intervals``). Rows that pool several readouts of a well (all times) use the
well bootstrap for accuracy too. Test plates are reported one by one and pooled, and
conditions the training plates never had (from the run's recorded training conditions)
are pooled apart, because a model that only recognises its training recipes fails there.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nscmonitor.training.evaluate import balanced_accuracy, bin_names, time_bin
from nscmonitor.training.intervals import N_BOOT, cluster_weights, percentile_interval, spread, wilson

ECE_BINS = 15
LATE_H = 48.0
ALL = "all"
LATE = "from 48 h"


@dataclass(frozen=True)
class Readouts:
    """One row per well and time point (or per well and time bin once collapsed)."""

    probs: np.ndarray
    y: np.ndarray
    well: np.ndarray
    plate: np.ndarray
    condition: np.ndarray
    hours: np.ndarray

    def take(self, mask: np.ndarray) -> "Readouts":
        return Readouts(*(a[mask] for a in (self.probs, self.y, self.well, self.plate, self.condition, self.hours)))


def plate_name(experiment: str, plate: str) -> str:
    return "/".join(p for p in (experiment, plate) if p) or "-"


def well_timepoints(probs: np.ndarray, y: np.ndarray, records: Sequence) -> Readouts:
    """Tiles -> one readout per well and time point: mean probability, majority truth."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        t = r.timepoint if r.timepoint is not None else r.elapsed_h
        groups[(r.experiment, r.plate, r.well, t)].append(i)
    k = probs.shape[1]
    idx = list(groups.values())
    first = [records[i[0]] for i in idx]
    return Readouts(
        probs=np.stack([probs[i].mean(axis=0) for i in idx]) if idx else np.zeros((0, k)),
        y=np.asarray([np.bincount(y[i], minlength=k).argmax() for i in idx], np.int64),
        well=np.asarray(["/".join((r.experiment, r.plate, r.well)) for r in first], dtype=object),
        plate=np.asarray([plate_name(r.experiment, r.plate) for r in first], dtype=object),
        condition=np.asarray([r.condition or "-" for r in first], dtype=object),
        hours=np.asarray([np.nan if r.elapsed_h is None else float(r.elapsed_h) for r in first], np.float64))


def per_well(ro: Readouts) -> Readouts:
    """Collapse to one readout per well: mean probability over its rows, majority truth."""
    wells, inv = np.unique(ro.well.astype(str), return_inverse=True)
    k = ro.probs.shape[1]
    rows = [np.flatnonzero(inv == j) for j in range(len(wells))]
    return Readouts(
        probs=np.stack([ro.probs[i].mean(axis=0) for i in rows]) if rows else np.zeros((0, k)),
        y=np.asarray([np.bincount(ro.y[i], minlength=k).argmax() for i in rows], np.int64),
        well=np.asarray([ro.well[i[0]] for i in rows], dtype=object),
        plate=np.asarray([ro.plate[i[0]] for i in rows], dtype=object),
        condition=np.asarray([ro.condition[i[0]] for i in rows], dtype=object),
        hours=np.asarray([np.nanmean(ro.hours[i]) if not np.isnan(ro.hours[i]).all() else np.nan for i in rows]))


def weighted_accuracy(w: np.ndarray, correct: np.ndarray) -> np.ndarray:
    return (w @ correct) / w.sum(axis=1)


def weighted_balanced_accuracy(w: np.ndarray, correct: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Mean recall over the classes drawn in each resample (as ``evaluate.balanced_accuracy``)."""
    recalls = []
    for c in range(k):
        m = (y == c).astype(np.float64)
        n = w @ m
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append(np.where(n > 0, (w @ (m * correct)) / n, np.nan))
    r = np.stack(recalls, axis=1)
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(r).all(axis=1), np.nan,
                        np.nansum(r, axis=1) / np.maximum((~np.isnan(r)).sum(axis=1), 1))


def weighted_ece(w: np.ndarray, conf: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """ECE over equal-width confidence bins (lo, hi], as ``evaluate.ece``, per resample."""
    b = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    gap = correct - conf
    total = np.zeros(w.shape[0])
    for j in np.unique(b):
        total += np.abs(w @ np.where(b == j, gap, 0.0))
    return total / w.sum(axis=1)


def figures(ro: Readouts, k: int, *, seed: int = 0, n_boot: int = N_BOOT) -> dict[str, Any]:
    """Accuracy, balanced accuracy and well-level ECE with 95 % intervals for a set of
    readouts; Wilson for accuracy when every well gives one readout, else the well bootstrap."""
    n = len(ro.y)
    wells = len(set(ro.well.tolist()))
    if n == 0:
        return {"wells": 0, "readouts": 0}
    pred = ro.probs.argmax(axis=1)
    correct = (pred == ro.y).astype(np.float64)
    conf = ro.probs.max(axis=1)
    w = cluster_weights(ro.well, n_boot=n_boot, seed=seed)
    one = np.ones((1, n))
    out = {"wells": wells, "readouts": n, "correct": int(correct.sum()), "accuracy": float(correct.mean()),
           "balanced_accuracy": balanced_accuracy(ro.y, pred, k),
           "ece": float(weighted_ece(one, conf, correct)[0]),
           "balanced_accuracy_ci": percentile_interval(weighted_balanced_accuracy(w, correct, ro.y, k)),
           "ece_ci": percentile_interval(weighted_ece(w, conf, correct)),
           "classes_present": sorted({int(c) for c in ro.y})}
    if n == wells:
        out["accuracy_ci"], out["accuracy_interval"] = wilson(int(correct.sum()), n), "wilson"
    else:
        out["accuracy_ci"] = percentile_interval(weighted_accuracy(w, correct))
        out["accuracy_interval"] = "well bootstrap"
    return out


def by_time(ro: Readouts, k: int, *, seed: int = 0, n_boot: int = N_BOOT,
            tile_ece: dict[str, float] | None = None) -> dict[str, dict[str, Any]]:
    """Rows per time bin and per hour (one readout per well), from 48 h (one per well) and
    all times."""
    bins = np.asarray([time_bin(None if math.isnan(h) else h) for h in ro.hours])
    rows: dict[str, dict[str, Any]] = {}
    for b in [*bin_names(), "<0", "unknown"]:
        m = bins == b
        if m.any():
            rows[b] = figures(per_well(ro.take(m)), k, seed=seed, n_boot=n_boot)
    for h in sorted(set(ro.hours[~np.isnan(ro.hours)].tolist())):  # evaluation.json only, not the tables
        rows[f"{h:g} h"] = figures(per_well(ro.take(ro.hours == h)), k, seed=seed, n_boot=n_boot)
    late = ro.hours >= LATE_H
    if late.any():
        rows[LATE] = figures(per_well(ro.take(late)), k, seed=seed, n_boot=n_boot)
    if len(ro.y):
        rows[ALL] = figures(ro, k, seed=seed, n_boot=n_boot)
    for b, v in (tile_ece or {}).items():
        if b in rows:
            rows[b]["tile_ece"] = v
    return rows


def tile_ece_by_time(probs: np.ndarray, y: np.ndarray, records: Sequence) -> dict[str, float]:
    """Tile-level ECE per time bin (the figure training reported), for the table beside the
    well-level one."""
    hours = np.asarray([np.nan if r.elapsed_h is None else float(r.elapsed_h) for r in records])
    bins = np.asarray([time_bin(None if math.isnan(h) else h) for h in hours])
    conf, correct = probs.max(axis=1), (probs.argmax(axis=1) == y).astype(np.float64)
    out = {}
    for b, m in [*((b, bins == b) for b in bin_names()), (LATE, hours >= LATE_H), (ALL, np.ones(len(y), bool))]:
        if m.any():
            out[b] = float(weighted_ece(np.ones((1, int(m.sum()))), conf[m], correct[m])[0])
    return out


def groups_of(ro: Readouts, train_conditions: Sequence[str] | None) -> dict[str, np.ndarray]:
    """Masks of the reported groups: pooled, each plate, and held-out vs training conditions
    when the run recorded which conditions it trained on."""
    out = {"pooled": np.ones(len(ro.y), bool)}
    for p in sorted(set(ro.plate.tolist())):
        out[f"plate {p}"] = ro.plate == p
    if train_conditions:
        seen = np.isin(ro.condition.astype(str), list(train_conditions))
        if (~seen).any():
            out["held-out conditions"] = ~seen
            out["training conditions"] = seen
    return out


def protocol_report(probs: np.ndarray, y: np.ndarray, records: Sequence, classes: Sequence[str], *,
                    train_conditions: Sequence[str] | None = None, plate_draws: dict[str, dict] | None = None,
                    seed: int = 0, n_boot: int = N_BOOT) -> dict[str, Any]:
    """The whole protocol for one model on one set of test tiles (probabilities calibrated)."""
    ro = well_timepoints(probs, y, records)
    k = len(classes)
    tile = tile_ece_by_time(probs, y, records)
    groups = {g: by_time(ro.take(m), k, seed=seed, n_boot=n_boot, tile_ece=tile if g == "pooled" else None)
              for g, m in groups_of(ro, train_conditions).items()}
    held = sorted(set(ro.condition.tolist()) - set(train_conditions)) if train_conditions else None
    return {"unit": "well", "bootstrap": {"resamples": n_boot, "seed": seed, "level": 0.95},
            "wells": len(set(ro.well.tolist())), "plates": sorted(set(ro.plate.tolist())),
            "held_out_conditions": held, "plate_draws": plate_draws or {}, "groups": groups}


def seed_spread(reports: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per group, time row and figure: mean, sd, min and max over the runs (training seeds)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for g in reports[0]["groups"]:
        out[g] = {}
        for row in reports[0]["groups"][g]:
            cells = [rep["groups"].get(g, {}).get(row, {}) for rep in reports]
            out[g][row] = {f: spread([c.get(f) for c in cells])
                           for f in ("accuracy", "balanced_accuracy", "ece")}
            out[g][row]["wells"] = cells[0].get("wells")
    return out


def _ci(v: float | None, ci: Sequence[float] | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{v:.3f}"


def _rows(groups: dict[str, dict[str, Any]], group: str) -> list[str]:
    return [b for b in [*bin_names(), "<0", "unknown", LATE, ALL] if b in groups.get(group, {})]


def run_table(report: dict[str, Any], group: str = "pooled") -> str:
    """Markdown: one run, one group, by time bin; intervals are 95 %."""
    rows = report["groups"][group]
    lines = ["| hours | wells | accuracy [95 % CI] | balanced accuracy [95 % CI] | well ECE [95 % CI] | tile ECE |",
             "|---|---|---|---|---|---|"]
    for b in _rows(report["groups"], group):
        r = rows[b]
        tile = f"{r['tile_ece']:.3f}" if r.get("tile_ece") is not None else "-"
        lines.append(f"| {b} | {r['wells']} | {_ci(r.get('accuracy'), r.get('accuracy_ci'))} | "
                     f"{_ci(r.get('balanced_accuracy'), r.get('balanced_accuracy_ci'))} | "
                     f"{_ci(r.get('ece'), r.get('ece_ci'))} | {tile} |")
    return "\n".join(lines)


def group_table(report: dict[str, Any], row: str = LATE) -> str:
    """Markdown: one run, every group (pooled, each plate, held-out conditions) at one time row,
    with what the manifest drew for each plate."""
    lines = [f"| group ({row}) | wells | accuracy [95 % CI] | balanced accuracy [95 % CI] | well ECE [95 % CI] "
             "| plate draws |", "|---|---|---|---|---|---|"]
    for g, rows in report["groups"].items():
        r = rows.get(row)
        if not r or not r.get("wells"):
            continue
        draws = report.get("plate_draws", {}).get(g.removeprefix("plate "), {})
        lines.append(f"| {g} | {r['wells']} | {_ci(r.get('accuracy'), r.get('accuracy_ci'))} | "
                     f"{_ci(r.get('balanced_accuracy'), r.get('balanced_accuracy_ci'))} | "
                     f"{_ci(r.get('ece'), r.get('ece_ci'))} | {describe_draws(draws)} |")
    return "\n".join(lines)


def describe_draws(draws: dict[str, Any]) -> str:
    """A plate's recorded draws in a table cell: its scalar numbers and names, short."""
    parts = [f"{k} {v:+.3g}" if isinstance(v, float) and "shift" in k else
             f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(draws.items())
             if isinstance(v, (int, float, str)) and not isinstance(v, bool) and k not in ("plate", "plate_name")]
    return ", ".join(parts[:6]) or "-"


def _spread(s: dict[str, Any]) -> str:
    if not s or s.get("mean") is None:
        return "-"
    sd = f" ± {s['sd']:.3f}" if s.get("sd") is not None else ""
    return f"{s['mean']:.3f}{sd} ({s['min']:.3f}-{s['max']:.3f})"


def seed_table(runs: Sequence[dict[str, Any]], spread_: dict[str, Any], group: str = "pooled") -> str:
    """Markdown: each run's (seed's) accuracy and balanced accuracy by time bin, then their
    mean ± sd (min-max) over the runs, and the well ECE's."""
    seeds = [str(r.get("seed", i)) for i, r in enumerate(runs)]
    lines = ["| hours | wells | accuracy by seed (" + ", ".join(seeds) + ") | accuracy mean ± sd (min-max) "
             "| balanced accuracy by seed | balanced accuracy mean ± sd (min-max) | well ECE mean ± sd (min-max) |",
             "|---|---|---|---|---|---|---|"]
    for b in _rows(runs[0]["protocol"]["groups"], group):
        cells = [r["protocol"]["groups"].get(group, {}).get(b, {}) for r in runs]
        acc = ", ".join("-" if c.get("accuracy") is None else f"{c['accuracy']:.3f}" for c in cells)
        bal = ", ".join("-" if c.get("balanced_accuracy") is None else f"{c['balanced_accuracy']:.3f}" for c in cells)
        s = spread_[group][b]
        lines.append(f"| {b} | {s['wells']} | {acc} | {_spread(s['accuracy'])} | {bal} | "
                     f"{_spread(s['balanced_accuracy'])} | {_spread(s['ece'])} |")
    return "\n".join(lines)


def seed_group_table(spread_: dict[str, Any], row: str = LATE) -> str:
    """Markdown: every group at one time row, spread over the runs."""
    lines = [f"| group ({row}) | wells | accuracy mean ± sd (min-max) | balanced accuracy mean ± sd (min-max) "
             "| well ECE mean ± sd (min-max) |", "|---|---|---|---|---|"]
    for g, rows in spread_.items():
        s = rows.get(row)
        if s and s.get("wells"):
            lines.append(f"| {g} | {s['wells']} | {_spread(s['accuracy'])} | {_spread(s['balanced_accuracy'])} | "
                         f"{_spread(s['ece'])} |")
    return "\n".join(lines)


def write_figure(path, runs: Sequence[dict[str, Any]], title: str):  # noqa: ANN001, ANN201
    """Well accuracy and balanced accuracy by time bin with their 95 % intervals, one line per
    run (seed), pooled (left), and accuracy per test plate and condition group (right)."""
    import os

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [b for b in bin_names() if any(b in r["protocol"]["groups"]["pooled"] for r in runs)]
    x = np.arange(len(names))
    fig, ax = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    for i, r in enumerate(runs):
        rows = r["protocol"]["groups"]["pooled"]
        for fig_key, marker in (("accuracy", "o-"), ("balanced_accuracy", "s--")):
            v = np.array([rows.get(b, {}).get(fig_key, np.nan) for b in names], float)
            ci = [rows.get(b, {}).get(f"{fig_key}_ci") or (np.nan, np.nan) for b in names]
            err = np.abs(np.array(ci, float).T - v)
            ax[0].errorbar(x + 0.06 * i, v, yerr=err, fmt=marker, capsize=3, color=f"C{i}",
                           label=f"{r.get('label', r.get('seed'))} {fig_key.replace('_', ' ')}")
    groups = [g for g in runs[0]["protocol"]["groups"] if g != "pooled"]
    for g in groups:
        v = np.nanmean([[r["protocol"]["groups"].get(g, {}).get(b, {}).get("accuracy", np.nan) for b in names]
                        for r in runs], axis=0)
        ax[1].plot(x, v, "o-", label=g)
    for a, t in zip(ax, ("pooled wells (95 % intervals)", "accuracy per group (mean over runs)")):
        a.set(xticks=x, ylim=(0, 1.02), xlabel="hours since induction", title=t)
        a.set_xticklabels(names)
        a.legend(fontsize=7)
    ax[0].set_ylabel("share of wells")
    fig.suptitle(title)
    fig.tight_layout()
    tmp = str(path) + ".part"
    fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path
