"""Tidy CSV export: one row per well x timepoint x class, and a per-image file beside it.

``timepoint`` is the readout's time key, unique per well; on a plate whose scans count within
acquisitions (a Harmony measurement, an ND2 or CZI file of the plate, a MetaXpress acquisition),
``acquisition`` (1-based) and ``scan`` say which scan of which acquisition it is (the key of
scan 1 of acquisition 2 is 100001); both are empty on other plates.

Out-of-distribution flag: ``n_ood`` (readouts) counts a well's images flagged at that time,
``ood_score``/``ood`` (images) are each image's score and flag (1/0); all empty where the
model gives no flag (unavailable, not "in distribution").

Strings that a spreadsheet would execute (cells starting with = + - @) get a leading
apostrophe: plate maps and file names come from outside and end up in Excel.

The plate map's extra columns (dose, cell line, passage, ...) follow the fixed columns in
both files, named as in the plate map (``map_<name>`` where a name is already a fixed
column), empty for wells the map does not list.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from nscmonitor.core.domain import well_name
from nscmonitor.core.errors import UserFacingError
from nscmonitor.store.reads import Repo

READOUT_COLUMNS = ["experiment", "plate", "well", "row", "col", "condition", "timepoint", "elapsed_h", "acquired_at",
                   "n_images", "n_tiles", "n_qc_failed", "class", "prob_mean", "prob_sd", "fraction_predicted",
                   "model_version", "n_ood", "acquisition", "scan"]


def escape(v: object) -> object:
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + v
    return v


def _num(v: float | None, nd: int = 6) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.{nd}g}" if isinstance(v, float) else str(v)


def _iso(dt: datetime | None) -> str:
    return dt.isoformat() if dt else ""


def row_letters(row: int) -> str:
    return well_name(row, 0)[:-2]


def choose_version(repo: Repo, experiment_id: int, requested: str | None,
                   active: Callable[[], str | None] | None = None) -> str | None:
    used = repo.model_versions_used(experiment_id)
    if requested:
        if requested not in used:
            raise UserFacingError(f"model version {requested!r} has no readouts here (have: {', '.join(used) or 'none'})")
        return requested
    act = active() if active else None
    if act in used:
        return act
    return used[-1] if used else None


def attribute_columns(attrs: dict[tuple[str, str], dict[str, str]], fixed: list[str]) -> list[tuple[str, str]]:
    """(attribute name, column header) in order of first appearance."""
    names: list[str] = []
    for a in attrs.values():
        names.extend(k for k in a if k not in names)
    return [(n, f"map_{n}" if n in fixed else n) for n in names]


def _atomic_writer(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    return tmp, open(tmp, "w", newline="", encoding="utf-8")


def export_readouts(repo: Repo, experiment: str, out: Path, *, model_version: str | None = None,
                    active: Callable[[], str | None] | None = None,
                    progress: Callable[[int], None] | None = None) -> tuple[int, str | None]:
    exp_id = repo.experiment_id(experiment)
    if exp_id is None:
        names = ", ".join(e.name for e in repo.experiments()) or "none"
        raise UserFacingError(f"no experiment named {experiment!r} in the database (have: {names})")
    version = choose_version(repo, exp_id, model_version, active)
    attrs = repo.well_attributes(exp_id)
    extra = attribute_columns(attrs, READOUT_COLUMNS)
    tmp, fh = _atomic_writer(out)
    n = 0
    with fh:
        w = csv.writer(fh)
        w.writerow(READOUT_COLUMNS + [escape(h) for _, h in extra])
        if version is not None:
            for ro in repo.readouts(exp_id, version):
                a = attrs.get((ro.plate, ro.well), {})
                tail = [escape(a.get(name, "")) for name, _ in extra]
                for i, cls in enumerate(ro.classes):
                    has = ro.n_images > 0 and i < len(ro.prob_mean)
                    w.writerow([escape(ro.experiment), escape(ro.plate), ro.well, row_letters(ro.row), ro.col + 1,
                                escape(ro.condition or ""), ro.timepoint, _num(ro.elapsed_h), _iso(ro.acquired_at),
                                ro.n_images, ro.n_tiles, ro.n_qc_failed, escape(cls),
                                _num(ro.prob_mean[i]) if has else "", _num(ro.prob_sd[i]) if has else "",
                                _num(ro.fraction[i]) if has else "", escape(ro.model_version),
                                _num(ro.n_ood), _num(ro.acquisition), _num(ro.scan)] + tail)
                    n += 1
                if progress:
                    progress(1)
    os.replace(tmp, out)
    return n, version


def export_images(repo: Repo, experiment: str, out: Path) -> int:
    exp_id = repo.experiment_id(experiment)
    if exp_id is None:
        raise UserFacingError(f"no experiment named {experiment!r} in the database")
    rows = list(repo.images(exp_id))
    classes: list[str] = []
    for _, preds in rows:
        for p in preds:
            for c in p["classes"]:
                if c not in classes:
                    classes.append(c)
    cols = ["experiment", "plate", "well", "field", "channel", "z", "timepoint", "elapsed_h", "acquired_at", "path",
            "status", "error", "rewritten", "qc_passed", "qc_reason", "focus", "focus_ratio", "saturation", "blank",
            "model_version",
            "engine", "n_tiles", "confidence"] + [f"prob_{c}" for c in classes] + [f"fraction_{c}" for c in classes] + \
        ["ood_score", "ood"]
    attrs = repo.well_attributes(exp_id)
    extra = attribute_columns(attrs, cols)
    cols = cols + [escape(h) for _, h in extra]
    tmp, fh = _atomic_writer(out)
    n = 0
    with fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for img, preds in rows:
            qc = img.qc or {}
            base = [escape(img.experiment), escape(img.plate or ""), img.well or "", _num(img.field), escape(img.channel or ""),
                    _num(img.z), _num(img.timepoint), _num(img.elapsed_h), _iso(img.acquired_at), escape(img.path),
                    img.status, escape(img.error or ""), int(img.rewritten),
                    "" if qc.get("passed") is None else int(bool(qc.get("passed"))), escape(qc.get("reason") or ""),
                    _num(qc.get("focus")), _num(qc.get("focus_ratio")), _num(qc.get("saturation")),
                    "" if "blank" not in qc else int(bool(qc["blank"]))]
            for p in preds or [None]:
                if p is None:
                    tail = ["", "", "", ""] + [""] * (2 * len(classes)) + ["", ""]
                else:
                    pm = dict(zip(p["classes"], p["prob_mean"]))
                    fr = dict(zip(p["classes"], p["fraction"]))
                    tail = [escape(p["model_version"]), p["engine"] or "", p["n_tiles"], _num(p["confidence"])] + \
                        [_num(pm.get(c)) for c in classes] + [_num(fr.get(c)) for c in classes] + \
                        [_num(p.get("ood_score")), "" if p.get("ood") is None else int(p["ood"])]
                a = attrs.get((img.plate, img.well), {})
                w.writerow(base + tail + [escape(a.get(name, "")) for name, _ in extra])
                n += 1
    os.replace(tmp, out)
    return n


def default_images_path(report: Path) -> Path:
    return report.with_name(report.stem + "_images" + report.suffix)
