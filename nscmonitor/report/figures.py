"""The report's figures as plain SVG text: no plotting library at report time, so ``nscmonitor
report`` runs wherever the core is installed (a headless acquisition PC), and each figure is
a standalone vector file the reader can save and paste into a slide.

Colours are the dashboard's (Okabe-Ito, readable with the common colour-vision deficiencies).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape as _esc

import numpy as np

from nscmonitor.core.domain import PLATE_SHAPES, well_name
from nscmonitor.core.palette import OOD_RGB, class_color, condition_color

FONT = "font-family:Helvetica,Arial,sans-serif"


def rgb(c: tuple[int, int, int]) -> str:
    return f"rgb({c[0]},{c[1]},{c[2]})"


def _svg(width: float, height: float, body: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" style="{FONT};background:#fff" role="img">'
            f'<title>{_esc(title)}</title><rect width="100%" height="100%" fill="#fff"/>' + "".join(body) + "</svg>")


def plate_shape(rows: int, cols: int) -> tuple[int, int]:
    """The smallest standard plate holding every well seen."""
    for _, (r, c) in sorted(PLATE_SHAPES.items()):
        if r >= rows and c >= cols:
            return r, c
    return rows, cols


@dataclass(frozen=True)
class WellCell:
    row: int
    col: int
    probs: Sequence[float] | None  # class probabilities, None = no readout at this time
    condition: str | None
    #: images of this readout flagged as unlike the model's training data (cross-hatched)
    flagged: int = 0


def plate_map_svg(cells: list[WellCell], classes: Sequence[str], title: str) -> str:
    """Each well filled with its top class's colour, stronger the surer the call (opacity =
    top probability); wells without data are outlined only. A legend names the classes."""
    nrows, ncols = plate_shape(max((c.row for c in cells), default=0) + 1, max((c.col for c in cells), default=0) + 1)
    pitch = max(7.0, min(26.0, 300.0 / ncols))
    r = pitch * 0.42
    left, top = 30.0, 38.0
    width = left + ncols * pitch + 10
    legend_y = top + nrows * pitch + 18
    height = legend_y + 32
    body = [f'<text x="{left}" y="16" font-size="13" font-weight="bold">{_esc(title)}</text>']
    step = 1 if ncols <= 24 else 4
    for c in range(0, ncols, step):
        body.append(f'<text x="{left + (c + 0.5) * pitch:.1f}" y="{top - 6}" font-size="9" text-anchor="middle">{c + 1}</text>')
    for rr in range(0, nrows, 1 if nrows <= 16 else 4):
        body.append(f'<text x="{left - 6}" y="{top + (rr + 0.5) * pitch + 3:.1f}" font-size="9" '
                    f'text-anchor="end">{well_name(rr, 0)[:-2]}</text>')
    by_pos = {(c.row, c.col): c for c in cells}
    hatch = "hatch-" + hashlib.sha1(title.encode("utf-8")).hexdigest()[:10]  # unique among a report's maps
    if any(c.flagged and c.probs is not None for c in cells):
        body.append(f'<defs><pattern id="{hatch}" width="4" height="4" patternUnits="userSpaceOnUse" '
                    f'patternTransform="rotate(45)"><path d="M0 0V4M0 0H4" stroke="{rgb(OOD_RGB)}" '
                    'stroke-width="1.2"/></pattern></defs>')
    for rr in range(nrows):
        for cc in range(ncols):
            cx, cy = left + (cc + 0.5) * pitch, top + (rr + 0.5) * pitch
            cell = by_pos.get((rr, cc))
            name = well_name(rr, cc)
            if cell is None or cell.probs is None or not np.all(np.isfinite(cell.probs)):
                tip = f"{name}: no data" + (f" ({cell.condition})" if cell and cell.condition else "")
                body.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r:.1f}" fill="none" stroke="#bbb">'
                            f'<title>{_esc(tip)}</title></circle>')
                continue
            k = int(np.argmax(cell.probs))
            p = float(cell.probs[k])
            tip = f"{name}: {classes[k]} P={p:.2f}" + (f" ({cell.condition})" if cell.condition else "")
            if cell.flagged:
                tip += f"; {cell.flagged} image(s) unlike the training data: this readout means little"
            body.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r:.1f}" fill="{rgb(class_color(classes[k], k))}" '
                        f'fill-opacity="{0.15 + 0.85 * max(0.0, min(1.0, p)):.2f}" stroke="#555" stroke-width="0.6">'
                        f'<title>{_esc(tip)}</title></circle>')
            if cell.flagged:
                body.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r:.1f}" fill="url(#{hatch})" class="ood" '
                            f'stroke="{rgb(OOD_RGB)}" stroke-width="{max(1.5, pitch * 0.06):.1f}">'
                            f'<title>{_esc(tip)}</title></circle>')
    x = left
    for k, cls in enumerate(classes):
        body.append(f'<circle cx="{x + 5}" cy="{legend_y - 4}" r="5" fill="{rgb(class_color(cls, k))}"/>'
                    f'<text x="{x + 13}" y="{legend_y}" font-size="11">{_esc(cls)}</text>')
        x += 20 + 7 * len(cls)
    hatched = "; hatched: images unlike the training data" if any(c.flagged and c.probs is not None
                                                                      for c in cells) else ""
    key = f"fill: top class; opacity: its probability; empty: no data{hatched}"
    body.append(f'<text x="{left}" y="{legend_y + 16}" font-size="10" fill="#555">{key}</text>')
    return _svg(max(width, x, left + 5.3 * len(key)), height, body, title)


@dataclass(frozen=True)
class Series:
    label: str
    mean: np.ndarray  # T
    sd: np.ndarray | None  # T; drawn as a band mean ± sd
    color: tuple[int, int, int]
    call_index: int | None = None  # time index of the confident call (a star)


def hour_ticks(v: float) -> tuple[float, float]:
    """(axis end, tick step) in hours: steps a time-lapse reader counts in (6, 12, 24 h ...)."""
    if not math.isfinite(v) or v <= 0:
        return 1.0, 0.2
    for step in (0.25, 0.5, 1, 2, 3, 6, 12, 24, 48, 72, 168, 336, 720):
        if v / step <= 7:
            return step * max(1, math.ceil(v / step - 1e-9)), step
    return v, v / 5


def _star(cx: float, cy: float, r: float) -> str:
    pts = []
    for i in range(10):
        a = -math.pi / 2 + i * math.pi / 5
        rr = r if i % 2 == 0 else r * 0.45
        pts.append(f"{cx + rr * math.cos(a):.1f},{cy + rr * math.sin(a):.1f}")
    return " ".join(pts)


def time_course_svg(x: np.ndarray, series: list[Series], title: str, ylabel: str, *, ymax: float = 1.0,
                    hours: bool = True, xlabel: str = "hours since induction") -> str:
    """Curves with their sd bands (shaded mean ± sd) and a star at each confident call; ``x``
    in hours, or (``hours`` False) the scans' time points."""
    width, height = 530.0, 280.0
    ml, mr, mt, mb = 52.0, 150.0, 30.0, 40.0
    pw, ph = width - ml - mr, height - mt - mb
    xmax, xstep = hour_ticks(float(np.nanmax(x)) if np.isfinite(x).any() else 1.0)

    def px(v: float) -> float:
        return ml + pw * (v / xmax)

    def py(v: float) -> float:
        return mt + ph * (1 - max(0.0, min(ymax, v)) / ymax)

    body = [f'<text x="{ml}" y="18" font-size="13" font-weight="bold">{_esc(title)}</text>',
            f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>']
    for i in range(6):
        yv = ymax * i / 5
        body.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{py(yv):.1f}" y2="{py(yv):.1f}" stroke="#eee"/>'
                    f'<text x="{ml - 5}" y="{py(yv) + 3:.1f}" font-size="10" text-anchor="end">{yv:g}</text>')
    for i in range(int(round(xmax / xstep)) + 1):
        xv = xstep * i
        body.append(f'<line x1="{px(xv):.1f}" x2="{px(xv):.1f}" y1="{mt + ph}" y2="{mt + ph + 4}" stroke="#888"/>'
                    f'<text x="{px(xv):.1f}" y="{mt + ph + 16}" font-size="10" text-anchor="middle">{xv:g}</text>')
    body.append(f'<text x="{ml + pw / 2}" y="{height - 6}" font-size="11" text-anchor="middle">'
                f'{_esc(xlabel)}</text>')
    body.append(f'<text transform="translate(14,{mt + ph / 2}) rotate(-90)" font-size="11" text-anchor="middle">'
                f'{_esc(ylabel)}</text>')
    for s in series:
        ok = np.isfinite(x) & np.isfinite(s.mean)
        if s.sd is not None:
            band = ok & np.isfinite(s.sd)
            if band.sum() >= 2:
                up = [f"{px(a):.1f},{py(m + d):.1f}" for a, m, d in zip(x[band], s.mean[band], s.sd[band])]
                lo = [f"{px(a):.1f},{py(m - d):.1f}" for a, m, d in zip(x[band], s.mean[band], s.sd[band])]
                body.append(f'<polygon class="sd-band" points="{" ".join(up + lo[::-1])}" fill="{rgb(s.color)}" '
                            f'fill-opacity="0.2" stroke="none"/>')
        pts = " ".join(f"{px(a):.1f},{py(m):.1f}" for a, m in zip(x[ok], s.mean[ok]))
        if ok.sum() >= 2:
            body.append(f'<polyline class="curve" points="{pts}" fill="none" stroke="{rgb(s.color)}" stroke-width="2"/>')
        for a, m in zip(x[ok], s.mean[ok]):
            body.append(f'<circle cx="{px(a):.1f}" cy="{py(m):.1f}" r="2.2" fill="{rgb(s.color)}"/>')
        if s.call_index is not None and ok[s.call_index]:
            cx, cy = px(float(x[s.call_index])), py(float(s.mean[s.call_index]))
            body.append(f'<polygon class="call" points="{_star(cx, cy, 8)}" fill="{rgb(s.color)}" stroke="#000" '
                        f'stroke-width="0.7"><title>{_esc(s.label)}: confident call from '
                        + (f'{float(x[s.call_index]):.1f} h' if hours else f'time point {float(x[s.call_index]):g}')
                        + '</title></polygon>')
    ly = mt + 6
    for s in series:
        body.append(f'<rect x="{ml + pw + 12}" y="{ly}" width="14" height="8" fill="{rgb(s.color)}" fill-opacity="0.5"/>'
                    f'<text x="{ml + pw + 30}" y="{ly + 8}" font-size="10">{_esc(s.label[:22])}</text>')
        ly += 15
    body.append(f'<text x="{ml + pw + 12}" y="{ly + 10}" font-size="9" fill="#555">band: mean ± sd; '
                f'★ confident call</text>')
    return _svg(width, max(height, ly + 20), body, title)
