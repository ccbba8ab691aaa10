"""The per-experiment report: one self-contained HTML file a PI can open, print or forward.

Sections: summary, plate maps at chosen times, per-condition time courses (mean ± sd across
replicate wells, with each condition's earliest confident call), calls per well, QC and
quarantine, provenance (model version, its validation numbers by hours since induction, the
engines that scored). Figures are inline SVG with a link that saves each one; there is no
script, so the page renders the same in any browser and prints as it looks.

Numbers come from the same reads as the tidy CSV (``Repo.readouts`` through
``report.tables``), so the report and the export never disagree.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from pathlib import Path

import numpy as np

from nscmonitor import __version__
from nscmonitor.core.queue import PROBLEMS, QueueState
from nscmonitor.core.domain import qc_kind
from nscmonitor.core.calibration import CallRule
from nscmonitor.report.calls import ConfidentCall, RuleInUse, confident_call, replicate_stats, rule_in_use
from nscmonitor.report.figures import Series, WellCell, condition_color, plate_map_svg, time_course_svg
from nscmonitor.report.prism import condition_columns
from nscmonitor.report.tables import PlateGrid, experiment_grids
from nscmonitor.core.scans import time_point_name
from nscmonitor.report.times import time_axis
from nscmonitor.store.reads import Repo

log = logging.getLogger(__name__)
SECTIONS = ("summary", "plate-maps", "time-courses", "calls", "qc", "provenance")
MAX_LISTED = 50

CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#222;line-height:1.35}
h1{font-size:22px;margin-bottom:2px} h2{font-size:18px;border-bottom:2px solid #0072b2;padding-bottom:3px;margin-top:28px}
h3{font-size:14px;margin:14px 0 4px} .sub{color:#555;font-size:13px}
table{border-collapse:collapse;font-size:12px;margin:6px 0} th,td{border:1px solid #ccc;padding:3px 6px;text-align:left}
th{background:#f2f5f8} td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:6px 10px 12px 0;vertical-align:top} figcaption{font-size:11px;color:#555}
figcaption a{color:#0072b2} .early{color:#b35900} .warn{color:#b00020}
@media print{figure{break-inside:avoid} h2{break-after:avoid} table{break-inside:auto}}
"""


@dataclass(frozen=True)
class ImageSummary:
    by_status: dict[str, int]
    qc_failed: int
    qc_reasons: list[tuple[str, int]]
    problems: list[tuple[str, str, str]]  # (path, status, reason) of quarantined/failed images
    engines: dict[str, int]  # engine -> images scored by the report's model version


def image_summary(repo: Repo, experiment_id: int, version: str | None) -> ImageSummary:
    status: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    engines: Counter[str] = Counter()
    problems = []
    qc_failed = 0
    for img, preds in repo.images(experiment_id):
        status[img.status] += 1
        if img.qc.get("passed") is False:
            qc_failed += 1
            reasons[qc_kind(str(img.qc.get("reason") or "unspecified"))] += 1
        if img.status in PROBLEMS:
            problems.append((img.path, img.status, img.error or ""))
        for p in preds:
            if p["model_version"] == version:
                engines[p["engine"] or "unrecorded"] += 1
    return ImageSummary(dict(status), qc_failed, reasons.most_common(), problems, dict(engines))


def _validation(repo: Repo, version: str | None) -> tuple[dict, dict, str]:
    """(model meta, validation by hours since induction {level: {bin: row}}, where it came from).
    The full numbers live in the metrics.json the registry keeps beside the model (or a
    training run beside a model served from a file); a missing or unreadable file leaves the
    summary carried inside the model."""
    if version is None:
        return {}, {}, ""
    from nscmonitor.store.registry import model_versions, served_file

    info = next((v for v in model_versions(repo.engine) if v.version == version), None)
    if info is not None:
        meta = dict(info.meta or {}, name=info.name, scheme=info.scheme, state=info.state,
                    created_at=info.created_at.isoformat() if info.created_at else None)
        path = Path(info.path).with_name("metrics.json")
    else:
        served = served_file(repo.engine, version)
        if served is None:
            return {}, {}, ""
        meta = dict(served.meta, state="served from a file, not registered", served_from=served.path,
                    first_served=served.created_at.isoformat() if served.created_at else None)
        path = Path(served.path).with_name("metrics.json")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.info("report: no validation by time for %s (%s: %s)", version, path, exc)
        return meta, {}, ""
    by_time = {lvl: metrics[lvl]["by_time"] for lvl in ("well", "image", "tile")
               if isinstance(metrics.get(lvl), dict) and isinstance(metrics[lvl].get("by_time"), dict)}
    return meta, by_time, str(path)


def pick_times(grid: PlateGrid, hours: Sequence[float] | None) -> list[int]:
    """Time indices for the plate maps: the nearest time point to each asked hour, or the
    first, middle and last time points."""
    n = len(grid.time_keys)
    if n == 0:
        return []
    if not hours:
        return sorted({0, n // 2, n - 1})
    e = np.where(np.isfinite(grid.elapsed_h), grid.elapsed_h, np.inf)
    return sorted({int(np.argmin(np.abs(e - h))) for h in hours})


def _fmt(v: float | None, nd: int = 3) -> str:
    if v is None or not np.isfinite(v):
        return ""
    return f"{v:.{nd}f}"


def _figure(svg: str, name: str, caption: str) -> str:
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return (f'<figure>{svg}<figcaption>{escape(caption)} · <a download="{escape(name)}.svg" '
            f'href="data:image/svg+xml;base64,{data}">save SVG</a></figcaption></figure>')


def _slug(*parts: str) -> str:
    return "_".join("".join(ch if ch.isalnum() or ch in "-" else "-" for ch in p) for p in parts)


def well_calls(grid: PlateGrid, rule: CallRule) -> list[ConfidentCall | None]:
    return [confident_call(grid.prob_mean[:, w, :], grid.elapsed_h, grid.classes, threshold=rule.threshold,
                           min_points=rule.min_points, flagged=None if grid.n_ood is None else grid.n_ood[:, w])
            for w in range(len(grid.wells))]


def condition_calls(grid: PlateGrid, rule: CallRule) -> dict[str, ConfidentCall | None]:
    out = {}
    for cond, idx in condition_columns(grid):
        mean, _, _ = replicate_stats(grid.prob_mean[:, idx, :])
        flagged = None if grid.n_ood is None else np.nansum(grid.n_ood[:, idx], axis=1)
        out[cond] = confident_call(mean, grid.elapsed_h, grid.classes, threshold=rule.threshold,
                                   min_points=rule.min_points, flagged=flagged)
    return out


def ood_notice(grid: PlateGrid) -> str:
    """What the dashboard's banner says, for the plate's report: how many of its scored images
    the model flagged as unlike its training data; empty when none (or no flag)."""
    if grid.n_ood is None or not np.nansum(grid.n_ood):
        return ""
    n, of = int(np.nansum(grid.n_ood)), int(grid.n_images.sum())
    wells = int((np.nan_to_num(grid.n_ood) > 0).any(axis=0).sum())
    share = (f"all {of} scored images" if n >= of else f"{n} of the {of} scored images ({n / max(of, 1):.0%})")
    return (f'<p class="warn">⚠ {share} of plate {escape(grid.plate)}, in {wells} '
            f"well{'s' if wells != 1 else ''}, are unlike the model's training data (out-of-distribution flag): "
            "their readouts mean little, are hatched in the plate maps and are left out of the calls.</p>")


def _plate_maps(grid: PlateGrid, times: list[int]) -> str:
    parts = [ood_notice(grid)]
    for t in times:
        flagged = np.zeros(len(grid.wells)) if grid.n_ood is None else np.nan_to_num(grid.n_ood[t])
        cells = [WellCell(w.row, w.col, None if grid.n_images[t, i] == 0 else grid.prob_mean[t, i], w.condition,
                          int(flagged[i])) for i, w in enumerate(grid.wells)]
        h = grid.elapsed_h[t]
        point = time_point_name(grid.time_keys[t])
        when = f"{h:.1f} h since induction" if np.isfinite(h) else f"time point {point}"
        title = f"{grid.plate} at {h:.1f} h" if np.isfinite(h) else f"{grid.plate}, time point {point}"
        slug = f"{h:g}h" if np.isfinite(h) else f"t{grid.time_keys[t]}"
        parts.append(_figure(plate_map_svg(cells, grid.classes, title), _slug(grid.plate, "plate", slug),
                             f"Plate {grid.plate}, {when}"))
    return "".join(parts)


def _time_courses(grid: PlateGrid, rule: CallRule) -> str:
    groups = condition_columns(grid)
    calls = condition_calls(grid, rule)
    axis = time_axis(grid.elapsed_h, grid.time_keys)
    parts = []
    for k, cls in enumerate(grid.classes):
        series = []
        for i, (cond, idx) in enumerate(groups):
            mean, sd, n = replicate_stats(grid.prob_mean[:, idx, k])
            call = calls.get(cond)
            series.append(Series(f"{cond} (n={len(idx)})", mean, sd, condition_color(i),
                                 call.index if call is not None and call.cls == cls else None))
        svg = time_course_svg(axis.x, series, f"{grid.plate}: P({cls}) by condition",
                              f"P({cls}), mean ± sd of wells", hours=axis.hours, xlabel=axis.label)
        parts.append(_figure(svg, _slug(grid.plate, "time-course", cls),
                             f"P({cls}): mean ± sd across replicate wells per condition"))
    rows = []
    for cond, idx in groups:
        call = calls.get(cond)
        if call is None:
            txt = f"no confident, stable call yet (top class ≥ {rule.threshold:.0%} up to the last time point)"
        else:
            txt = (f"<b>{escape(call.cls)}</b> from {axis.at(call.index)} (P = {call.probability:.2f})"
                   + (' <span class="early">before 24 h: treat as early</span>' if call.early else ""))
        rows.append(f"<tr><td>{escape(cond)}</td><td class=num>{len(idx)}</td><td>{txt}</td></tr>")
    table = ("<h3>Earliest confident call per condition</h3><table><tr><th>condition</th><th>wells</th>"
             "<th>call</th></tr>" + "".join(rows) + "</table>")
    return "".join(parts) + table


def _calls_table(grid: PlateGrid, rule: CallRule) -> str:
    calls = well_calls(grid, rule)
    attrs = grid.attribute_names
    head = (["plate", "well", "condition"] + attrs + ["call", "from (h)", "P at call", "last time (h)"]
            + [f"P({c}) last" for c in grid.classes] + ["images"])
    rows = []
    for i, w in enumerate(grid.wells):
        has = np.flatnonzero(grid.n_images[:, i] > 0)
        last = int(has[-1]) if len(has) else None
        call = calls[i]
        cells = [escape(grid.plate), escape(w.name), escape(w.condition or "")] + \
            [escape(w.attributes.get(a, "")) for a in attrs]
        if call is None:
            cells += ["—", "", "", ]
        else:
            cells += [escape(call.cls) + (' <span class="early">(early)</span>' if call.early else ""),
                      _fmt(call.elapsed_h, 1), _fmt(call.probability)]
        if last is None:
            cells += [""] + [""] * len(grid.classes) + ["0"]
        else:
            cells += [_fmt(float(grid.elapsed_h[last]), 2)] + [_fmt(float(v), 4) for v in grid.prob_mean[last, i]] + \
                [str(int(grid.n_images[last, i]))]
        rows.append(f'<tr data-plate="{escape(grid.plate)}" data-well="{escape(w.name)}">'
                    + "".join(f"<td>{c}</td>" if j < 3 + len(attrs) + 1 else f"<td class=num>{c}</td>"
                              for j, c in enumerate(cells)) + "</tr>")
    return ('<table class="calls"><tr>' + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"
            + "".join(rows) + "</table>")


def _qc(summary: ImageSummary) -> str:
    total = sum(summary.by_status.values())
    rows = "".join(f"<tr><td>{escape(s)}</td><td class=num>{n}</td></tr>" for s, n in sorted(summary.by_status.items()))
    out = [f"<p>{total} images: </p><table><tr><th>status</th><th>images</th></tr>{rows}</table>",
           f"<p>{summary.qc_failed} image(s) failed QC (not scored into readouts).</p>"]
    if summary.qc_reasons:
        out.append("<table><tr><th>QC reason</th><th>images</th></tr>" + "".join(
            f"<tr><td>{escape(r)}</td><td class=num>{n}</td></tr>" for r, n in summary.qc_reasons) + "</table>")
    if summary.problems:
        more = len(summary.problems) - MAX_LISTED
        out.append('<h3 class="warn">Quarantined or failed images</h3><table><tr><th>file</th><th>status</th>'
                   "<th>reason</th></tr>" + "".join(
                       f"<tr><td>{escape(p)}</td><td>{escape(s)}</td><td>{escape(e)}</td></tr>"
                       for p, s, e in summary.problems[:MAX_LISTED]) + "</table>"
                   + (f"<p>… and {more} more (nscmonitor export writes them all to the per-image CSV).</p>"
                      if more > 0 else ""))
    else:
        out.append("<p>No image was quarantined or failed.</p>")
    return "".join(out)


def _provenance(version: str | None, meta: dict, by_time: dict, source: str, summary: ImageSummary) -> str:
    if version is None:
        return "<p>No model has scored this experiment yet.</p>"
    rows = [("model version", version), ("name", meta.get("name")), ("architecture", meta.get("arch")),
            ("scheme", meta.get("scheme")), ("classes", ", ".join(meta.get("classes") or [])),
            ("registered", meta.get("created_at")), ("state", meta.get("state")),
            ("served from", meta.get("served_from")), ("first served", meta.get("first_served")),
            ("engines that scored it", ", ".join(f"{e} ({n} images)" for e, n in sorted(summary.engines.items()))),
            ("nscmonitor", __version__)]
    out = ["<table>" + "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in rows
                               if v not in (None, "")) + "</table>"]
    metrics = meta.get("metrics") or {}
    if metrics:
        out.append("<h3>Validation summary carried in the model</h3><table>" + "".join(
            f"<tr><th>{escape(str(k))}</th><td class=num>{escape(_fmt(v) if isinstance(v, float) else str(v))}</td></tr>"
            for k, v in metrics.items()) + "</table>")
    if by_time:
        out.append(f"<h3>Validation by hours since induction</h3><p class=sub>from {escape(source)}</p>")
        for lvl, bins in by_time.items():
            out.append(f"<table><tr><th>{escape(lvl)} level: hours</th><th>n</th><th>accuracy</th>"
                       "<th>balanced accuracy</th></tr>" + "".join(
                           f"<tr><td>{escape(str(b))}</td><td class=num>{r.get('n', '')}</td>"
                           f"<td class=num>{_fmt(r.get('accuracy'))}</td>"
                           f"<td class=num>{_fmt(r.get('balanced_accuracy'))}</td></tr>"
                           for b, r in bins.items() if isinstance(r, dict)) + "</table>")
    else:
        out.append('<p class="warn">No validation numbers by hours since induction were found for this model '
                   "(the registry keeps them in metrics.json beside the model).</p>")
    return "".join(out)


def build_report(repo: Repo, experiment: str, *, times: Sequence[float] | None = None,
                 model_version: str | None = None, active: Callable[[], str | None] | None = None,
                 threshold: float | None = None, generated_at: datetime | None = None) -> tuple[str, str | None]:
    """(the page, the model version it shows). Calls follow the call rule of that model
    (``report.calls.rule_in_use``); ``threshold`` overrides its probability threshold."""
    exp_id, version, grids = experiment_grids(repo, experiment, model_version, active)
    summary = image_summary(repo, exp_id, version)
    meta, by_time, source = _validation(repo, version)
    in_use = _rule(repo, version, threshold)
    rule = in_use.rule
    now = (generated_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    n_wells = sum(len(g.wells) for g in grids)
    n_times = max((len(g.time_keys) for g in grids), default=0)
    last_h = max((float(np.nanmax(g.elapsed_h)) for g in grids if np.isfinite(g.elapsed_h).any()), default=float("nan"))
    n_ood = sum(int(np.nansum(g.n_ood)) for g in grids if g.n_ood is not None)
    body = [f"<h1>{escape(experiment)}</h1>",
            f'<p class=sub>nscmonitor report · generated {now:%Y-%m-%d %H:%M} UTC · model {escape(version or "none")}</p>',
            '<section id="summary"><h2>Summary</h2>',
            f"<p>{len(grids)} plate(s), {n_wells} wells with readouts, {n_times} time points"
            + (f" up to {last_h:.1f} h since induction" if np.isfinite(last_h) else "") + "; "
            f"{sum(summary.by_status.values())} images, {summary.by_status.get(QueueState.DONE, 0)} scored, "
            f"{summary.qc_failed} failed QC, {summary.by_status.get(QueueState.QUARANTINED, 0)} quarantined"
            + (f", <span class=warn>{n_ood} unlike the model's training data</span> (hatched in the plate maps, "
               "left out of the calls)" if n_ood else "") + ". "
            "A call is confident from the first time point after which the top class stays the same at "
            f"{escape(in_use.text())}.</p></section>",
            '<section id="plate-maps"><h2>Plate maps</h2>']
    if not grids:
        body.append("<p>No readouts yet.</p>")
    for g in grids:
        body.append(_plate_maps(g, pick_times(g, times)))
    body.append('</section><section id="time-courses"><h2>Time courses by condition</h2>')
    for g in grids:
        body.append(_time_courses(g, rule))
    body.append('</section><section id="calls"><h2>Calls per well</h2>'
                "<p class=sub>P(class) last: the well's readout at its last time point (the tidy CSV's prob_mean).</p>")
    for g in grids:
        body.append(_calls_table(g, rule))
    body.append('</section><section id="qc"><h2>QC and quarantine</h2>' + _qc(summary) + "</section>")
    body.append('<section id="provenance"><h2>Provenance</h2>' + _provenance(version, meta, by_time, source, summary)
                + "</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(experiment)}: nscmonitor report</title><style>{CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n"), version


def _rule(repo: Repo, version: str | None, threshold: float | None) -> RuleInUse:
    """The model's call rule (registered metadata), with an asked threshold in its place."""
    from nscmonitor.store.registry import version_meta

    in_use = rule_in_use(version_meta(repo.engine, version) if version else None, version)
    if threshold is None:
        return in_use
    return RuleInUse(CallRule(float(threshold), in_use.rule.min_points),
                     f"threshold asked for; persistence: {in_use.source}", False)


def write_report(repo: Repo, experiment: str, out: Path, **kw) -> tuple[Path, str | None]:
    html, version = build_report(repo, experiment, **kw)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, out)
    return out, version
