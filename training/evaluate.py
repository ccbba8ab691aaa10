"""Held-out metrics at tile, image and well level, by hours since induction.

A tile is what the model sees; the scientist reads wells. Image = mean probability over the
tiles of one plate/well/field/timepoint; well = mean over all of a well's tiles at one
timepoint. Temperature is fitted on validation logits (never on test) so confidences mean
what they say; ECE and the reliability diagram show how well that worked.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nscmonitor.training.data import TileRecord

TIME_BINS = ((0, 12), (12, 24), (24, 48), (48, 72), (72, math.inf))
LEVELS = ("tile", "image", "well")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Minimise validation NLL over log T (one parameter, so no overfitting worth naming)."""
    from scipy.optimize import minimize_scalar

    if len(y) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        p = softmax(logits, math.exp(log_t))
        return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())

    res = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(res.x))


def time_bin(h: float | None) -> str:
    if h is None or (isinstance(h, float) and math.isnan(h)):
        return "unknown"
    if h < 0:
        return "<0"
    for lo, hi in TIME_BINS:
        if lo <= h < hi:
            return f"{lo}+" if hi == math.inf else f"{lo}-{hi}"
    return "unknown"


def bin_names() -> list[str]:
    return [time_bin(lo) for lo, _ in TIME_BINS]


def ece_if_calibrated(conf: np.ndarray, n_bins: int = 15, draws: int = 2000, seed: int = 0) -> dict[str, float]:
    """The ECE a perfectly calibrated model with exactly these top-class confidences would show
    on this many readouts: each readout right with probability equal to its confidence, drawn
    ``draws`` times (median and 95th percentile). ECE is biased upwards on small samples (a
    bin of a few readouts misses its confidence by chance), so on 75 wells it is well above
    0.03 for a perfect model; an ECE inside this range is no evidence of miscalibration, and a
    target below it cannot be shown on so few wells."""
    conf = np.asarray(conf, float)
    if conf.size == 0:
        return {"median": float("nan"), "p95": float("nan"), "n": 0}
    edges = np.linspace(0, 1, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)  # bins (lo, hi] as ece()
    counts = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    right = np.random.default_rng(seed).random((draws, conf.size)) < conf
    hits = np.stack([np.bincount(idx, weights=r, minlength=n_bins) for r in right])
    values = np.abs(hits - conf_sum).sum(axis=1) / conf.size  # sum over bins of n_b/n * |acc_b - conf_b|
    return {"median": float(np.median(values)), "p95": float(np.percentile(values, 95)), "n": int(conf.size),
            "nonempty_bins": int((counts > 0).sum())}


def ece(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> tuple[float, list[dict[str, float]]]:
    """Expected calibration error over equal-width confidence bins, plus the bins themselves."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0, 1, n_bins + 1)
    total, rows = 0.0, []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
            rows.append({"lo": float(lo), "hi": float(hi), "n": int(m.sum()),
                         "accuracy": float(correct[m].mean()), "confidence": float(conf[m].mean())})
    return float(total), rows


def aggregate(probs: np.ndarray, y: np.ndarray, records: Sequence[TileRecord], level: str):
    """Mean probabilities per image or well-timepoint group; returns (probs, y, hours).

    A group's truth is the majority of its tiles' labels: simulator tiles are labelled by
    the cells they hold, so the tiles of one well need not agree."""
    if level == "tile":
        return probs, y, [r.elapsed_h for r in records]
    idx = _groups(records, level)
    k = probs.shape[1]
    truth = [int(np.bincount(y[i], minlength=k).argmax()) for i in idx]
    return (np.stack([probs[i].mean(axis=0) for i in idx]), np.asarray(truth, dtype=np.int64),
            [records[i[0]].elapsed_h for i in idx])


def _groups(records: Sequence[TileRecord], level: str) -> list[list[int]]:
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        t = r.timepoint if r.timepoint is not None else r.elapsed_h
        if level == "image":
            key = (r.experiment, r.plate, r.well, r.field, t) if t is not None else (r.path,)
        else:
            key = (r.experiment, r.plate, r.well, t)
        groups[key].append(i)
    return list(groups.values())


def by_condition(probs: np.ndarray, y: np.ndarray, records: Sequence[TileRecord]) -> dict[str, dict[str, Any]]:
    """Well-level accuracy per treatment condition (simulator exports name it): a headline
    number hides which wells fail, and a mixed well whose fates are near a tie is a different
    problem from a directed well read wrong."""
    k = probs.shape[1]
    acc: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # n, right, n from 48 h, right from 48 h
    for i in _groups(records, "well"):
        right = int(probs[i].mean(axis=0).argmax() == np.bincount(y[i], minlength=k).argmax())
        h = records[i[0]].elapsed_h
        a = acc[records[i[0]].condition or "-"]
        a[0] += 1
        a[1] += right
        if h is not None and h >= 48:
            a[2] += 1
            a[3] += right
    return {c: {"n": n, "accuracy": r / n, "n_from_48h": n48, "accuracy_from_48h": r48 / n48 if n48 else None}
            for c, (n, r, n48, r48) in sorted(acc.items())}


def balanced_accuracy(y: np.ndarray, pred: np.ndarray, k: int) -> float | None:
    """Mean recall over the classes present in ``y`` (a class absent from the truth has no
    recall; sklearn warns and counts it anyway)."""
    present = [c for c in range(k) if (y == c).any()]
    return float(np.mean([(pred[y == c] == c).mean() for c in present])) if present else None


def classification_metrics(probs: np.ndarray, y: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    k = len(classes)
    pred = probs.argmax(axis=1)
    labels = list(range(k))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    out: dict[str, Any] = {
        "n": int(len(y)), "accuracy": float((pred == y).mean()) if len(y) else None,
        "balanced_accuracy": balanced_accuracy(y, pred, k),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, c in enumerate(classes)},
        "confusion": confusion_matrix(y, pred, labels=labels).tolist(),
        "roc_auc": None,
    }
    present = sorted(set(y.tolist()))
    if len(present) == k:
        out["roc_auc"] = float(roc_auc_score(y, probs[:, 1]) if k == 2 else
                               roc_auc_score(y, probs, multi_class="ovr", labels=labels))
    out["ece"], out["reliability"] = ece(probs, y)
    return out


def level_report(probs: np.ndarray, y: np.ndarray, hours: list, classes: Sequence[str]) -> dict[str, Any]:
    rep = classification_metrics(probs, y, classes)
    bins = np.asarray([time_bin(h) for h in hours])
    pred = probs.argmax(axis=1)
    rep["by_time"] = {}
    for b in [*bin_names(), "<0", "unknown"]:
        m = bins == b
        if m.any():
            rep["by_time"][b] = {"n": int(m.sum()), "accuracy": float((pred[m] == y[m]).mean()),
                                 "balanced_accuracy": balanced_accuracy(y[m], pred[m], len(classes))}
    hrs = np.asarray([np.nan if h is None else float(h) for h in hours])
    rep["by_hour"] = {}
    for h in sorted(set(hrs[~np.isnan(hrs)].tolist())):
        m = hrs == h
        rep["by_hour"][f"{h:g}"] = {"n": int(m.sum()), "accuracy": float((pred[m] == y[m]).mean()),
                                    "balanced_accuracy": balanced_accuracy(y[m], pred[m], len(classes))}
    late = np.asarray([h is not None and h >= 48 for h in hours])
    rep["accuracy_from_48h"] = float((pred[late] == y[late]).mean()) if late.any() else None
    return rep


def full_report(logits: np.ndarray, y: np.ndarray, records: Sequence[TileRecord], classes: Sequence[str],
                temperature: float) -> dict[str, Any]:
    probs = softmax(logits, temperature)
    report = {lvl: level_report(*aggregate(probs, y, records, lvl), classes) for lvl in LEVELS}
    if any(r.condition for r in records):
        report["well"]["by_condition"] = by_condition(probs, y, records)
    return report


def write_metrics(run_dir: Path, metrics: dict[str, Any], name: str = "metrics.json") -> Path:
    path = Path(run_dir) / name
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True, default=float))
    os.replace(tmp, path)
    return path


def write_figure(path: Path, report: dict[str, Any], classes: Sequence[str], title: str) -> Path:
    """Confusion matrix (well level), accuracy vs time (all levels), reliability (tile)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.5))
    cm = np.asarray(report["well"]["confusion"], float)
    ax[0].imshow(cm / np.maximum(cm.sum(axis=1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(cm):
        ax[0].text(j, i, int(v), ha="center", va="center")
    ax[0].set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true",
              title="well-level confusion")
    ax[0].set_xticklabels(classes, rotation=30, ha="right")
    ax[0].set_yticklabels(classes)
    names = bin_names()
    for lvl in LEVELS:
        bt = report[lvl]["by_time"]
        ax[1].plot(range(len(names)), [bt.get(b, {}).get("accuracy", np.nan) for b in names], "o-", label=lvl)
    ax[1].axhline(1 / len(classes), ls=":", c="grey", label="chance")
    ax[1].set(xticks=range(len(names)), ylim=(0, 1.02), xlabel="hours since induction", ylabel="accuracy",
              title="accuracy by time")
    ax[1].set_xticklabels(names)
    ax[1].legend()
    rel = report["tile"]["reliability"]
    ax[2].plot([0, 1], [0, 1], ":", c="grey")
    ax[2].plot([r["confidence"] for r in rel], [r["accuracy"] for r in rel], "o-")
    ax[2].set(xlabel="confidence", ylabel="accuracy", title=f"reliability (tile ECE {report['tile']['ece']:.3f})")
    fig.suptitle(title)
    fig.tight_layout()
    tmp = Path(str(path) + ".part")
    fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def time_table(report: dict[str, Any]) -> str:
    """Markdown table of accuracy by time bin per level (for docs and the console)."""
    names = bin_names()
    lines = ["| level | " + " | ".join(f"{b} h" for b in names) + " | >=48 h | all |",
             "|---|" + "---|" * (len(names) + 2)]
    for lvl in LEVELS:
        bt = report[lvl]["by_time"]
        cells = [f"{bt[b]['accuracy']:.3f} (n={bt[b]['n']})" if b in bt else "-" for b in names]
        late = report[lvl]["accuracy_from_48h"]
        lines.append(f"| {lvl} | " + " | ".join(cells) + f" | {late:.3f} | {report[lvl]['accuracy']:.3f} |"
                     if late is not None else f"| {lvl} | " + " | ".join(cells) + f" | - | {report[lvl]['accuracy']:.3f} |")
    return "\n".join(lines)


def condition_table(report: dict[str, Any]) -> str:
    """Markdown table of well-level accuracy per condition ('' when the data has none)."""
    rows = report["well"].get("by_condition")
    if not rows:
        return ""
    lines = ["| condition | wells x times | well accuracy | from 48 h |", "|---|---|---|---|"]
    for c, r in rows.items():
        late = "-" if r["accuracy_from_48h"] is None else f"{r['accuracy_from_48h']:.3f} (n={r['n_from_48h']})"
        lines.append(f"| {c} | {r['n']} | {r['accuracy']:.3f} | {late} |")
    return "\n".join(lines)


def _model_logits(model_path: Path, records: list[TileRecord], device: str):
    """(logits-or-log-probs, y-index space, meta dict, temperature) for torch or ONNX models."""
    from nscmonitor.training.data import load_arrays

    if model_path.suffix == ".onnx":
        from nscmonitor.engines.metadata import read_onnx_metadata
        from nscmonitor.engines.ort import OrtCpuEngine

        md = read_onnx_metadata(model_path)
        meta = {"scheme": md.scheme, "classes": list(md.classes), "image_size": md.input_size,
                "tile_size": md.extra.get("tile_size_px"), "arch": md.arch,
                **{k: md.extra[k] for k in ("well_calibration", "call_rule") if md.extra.get(k)}}
        x, y, recs = load_arrays(records, md.classes, tile_size=meta["tile_size"], image_size=md.input_size,
                                 model_um=md.pixel_size_um)
        engine = OrtCpuEngine(model_path, md)
        engine.load()
        probs = np.concatenate([engine.infer(x[i:i + 64, None].astype(np.float32)) for i in range(0, len(x), 64)])
        engine.close()
        return np.log(np.clip(probs, 1e-12, None)), y, recs, meta, 1.0
    import torch

    from nscmonitor.training.export import load_checkpoint
    from nscmonitor.training.train import predict_logits

    model, meta = load_checkpoint(model_path)
    x, y, recs = load_arrays(records, meta["classes"], tile_size=meta["tile_size"], image_size=meta["image_size"],
                             model_um=meta.get("pixel_size_um"))
    logits = predict_logits(model.to(device), x, torch.device(device))
    return logits, y, recs, meta, float(meta.get("temperature", 1.0))


def held_out_records(data: Sequence[str | Path], label_mode: str, scheme: str,
                     split: str) -> tuple[list[TileRecord], str]:
    """Labelled tiles of one or more exports in the model's scheme; (records, split used).
    Data with a complete split column gives its ``split``; data without one is taken whole
    (assumed held out, e.g. a new plate). With several exports each one's folder name is put
    before plate names that would otherwise collide (every export numbers its plates from 1)."""
    from dataclasses import replace

    from nscmonitor.training import data as D

    out, used = [], set()
    for d in data:
        records, _ = D.discover(d, label_mode)
        records, _ = D.for_scheme(records, scheme)
        if split != "all" and records and all(r.split in D.SPLITS for r in records):
            records = [r for r in records if r.split == split]
            used.add(split)
        else:
            used.add("all")
        if len(data) > 1:
            records = [replace(r, experiment="/".join(p for p in (Path(d).name, r.experiment) if p)) for r in records]
        out.extend(records)
    if not out:
        raise D.DataError(f"no labelled tiles in split {split!r} of {', '.join(map(str, data))}")
    return out, "+".join(sorted(used))


def evaluate_model(model: str | Path, data: str | Path | Sequence[str | Path], *, split: str = "test",
                   device: str = "cpu", label_mode: str | None = None, train_conditions: Sequence[str] | None = None,
                   plate_draws: dict[str, dict] | None = None, seed: int = 0, n_boot: int | None = None
                   ) -> dict[str, Any]:
    """A run dir / checkpoint (torch) or model.onnx (ONNX Runtime) on labelled data: the
    tile / image / well report training writes, plus ``protocol`` (wells as the unit, 95 %
    intervals, per plate and pooled, held-out conditions). Writes nothing."""
    from nscmonitor.training.intervals import N_BOOT
    from nscmonitor.training.protocol import protocol_report

    model = Path(model)
    data = [data] if isinstance(data, (str, Path)) else list(data)
    scheme, trained_mode = _scheme_of(model)
    label_mode = label_mode or trained_mode
    records, split = held_out_records(data, label_mode, scheme, split)
    logits, y, recs, meta, temperature = _model_logits(model, records, device)
    report = full_report(logits, y, recs, meta["classes"], temperature)
    report["protocol"] = protocol_report(softmax(logits, temperature), y, recs, meta["classes"],
                                         train_conditions=train_conditions, plate_draws=plate_draws, seed=seed,
                                         n_boot=n_boot or N_BOOT)
    report.update(stored_calls(softmax(logits, temperature), y, recs, meta))
    return {"split": split, "data": [str(d) for d in data], "model": str(model), "temperature": temperature,
            "label_mode": label_mode, "classes": list(meta["classes"]), "scheme": meta["scheme"], **report}


def stored_calls(probs: np.ndarray, y: np.ndarray, records: Sequence[TileRecord], meta: dict[str, Any]
                 ) -> dict[str, Any]:
    """ECE per time bin before and after the model's own well calibration, and the earliest
    confident calls under its own call rule (both fitted on its validation wells in
    training); nothing for a model that carries neither."""
    from nscmonitor.core.calibration import call_rule_of, well_calibration_of
    from nscmonitor.training import calls as C

    stored = {k: meta[k] for k in ("well_calibration", "call_rule") if meta.get(k)}
    if not stored:
        return {}
    cal, rule = well_calibration_of(stored), call_rule_of(stored)
    return {"well_calibration": stored.get("well_calibration"), "ece_by_time": C.ece_by_time(probs, y, records, cal),
            "calls": C.held_out_calls(probs, y, records, meta["classes"], cal, rule)}


def _scheme_of(model: Path) -> tuple[str, str]:
    """(scheme, label mode the model was trained with; 'tile' for older models)."""
    if model.suffix == ".onnx":
        from nscmonitor.engines.metadata import read_onnx_metadata
        md = read_onnx_metadata(model)
        return md.scheme, (md.extra or {}).get("label_mode") or "tile"
    from nscmonitor.training.export import load_checkpoint
    meta = load_checkpoint(model)[1]
    return meta["scheme"], meta.get("label_mode") or "tile"
