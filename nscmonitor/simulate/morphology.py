"""Per-class cell shapes at a commitment level s (science.md §3.3-3.4), drawn as maps.

Each parameter is interpolated p(s) = p_NSC + s (p_fate - p_NSC). The outputs are two maps in
pixels: ``phi``, the optical path (thickness) that the phase/bright-field optics turn into
contrast, and ``bright``, the extra term that makes thick rounded objects (neuron somata,
mitotic and dead cells) phase-bright.

Process geometry (branch angles, turns, lengths) is hashed from (cell uid, branch, step), so
a neuron's neurites grow along the same path from frame to frame: longer, never redrawn.

Departures: astrocyte processes are lobes of the flat sheet (a stellate star shape) rather
than separate polylines; neurites do not fasciculate and somata do not actively cluster
(clones stay close, which gives some clustering); mature OL veils are a faint disc.
"""

from __future__ import annotations

import numpy as np

from nscmonitor.simulate import raster
from nscmonitor.simulate.culture import ASTROCYTE, NEURON, OLIGODENDROCYTE, UNDIFFERENTIATED, Cells, CellState
from nscmonitor.simulate.optics import upsample
from nscmonitor.simulate.seeds import hash_normal, hash_uniform

B, S = 16, 10  # branches per cell, vertices per branch
SHEET_BIN = 3

# Index by fate: neuron, astrocyte, oligodendrocyte, undifferentiated (µm or relative units).
SOMA_R = np.array([4.6, 8.0, 5.0, 5.6])
SOMA_PHI = np.array([0.95, 0.40, 0.85, 1.0])
SOMA_BRIGHT = np.array([1.15, 0.0, 0.10, 0.3])  # NSCs are rounded: some are phase-bright
CURVE_SD = 0.08  # rad per step: a branch's steady bend
FASCICLE_PULL = 0.5  # how hard a committed neurite turns to the field's flow per step
SOMA_ASPECT = np.array([0.35, 0.15, 0.0, 0.0])  # added to the cell's own aspect at s = 1
TURN_SD = np.array([0.17, 0.20, 0.60, 0.25])  # rad per step: neurites run straight, OL webs wind
LINE_PHI = np.array([0.55, 0.0, 0.55, 0.85])  # per px of length; neurites are sub-pixel wide



def branch_lengths(cells: Cells, st: CellState, hours: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Length (µm) of each branch (n, B), the branch each one starts on (-1: soma) and where
    along it (fraction)."""
    uid = cells.uid[st.index]
    n = len(uid)
    b = np.arange(B)[None, :]
    u = hash_uniform(uid[:, None], b, 1)
    size = cells.size[st.index][:, None]
    s = st.s[:, None]
    fate = st.fate[:, None]

    # Undifferentiated: 0-2 short processes, bipolar when two (spindle-shaped NSCs).
    n_nsc = np.floor(hash_uniform(uid, 2) * 3)[:, None]
    l_nsc = np.where(b < n_nsc, 5.0 + 25.0 * u, 0.0) * size

    # Neuron: axon + 2-5 dendrites from the soma, four side branches; total length grows
    # ~6 µm/h from 2 tau before t50 but never before induction (d3 ~ 100-300 µm, d7 up to
    # 1 mm, science.md §3.3).
    t50 = cells.t50[st.index][:, None]
    tau = cells.tau[st.index][:, None]
    total = np.minimum(1000.0, 25.0 + 6.0 * np.maximum(0.0, hours - np.maximum(t50 - 2 * tau, 0.0))) * size
    n_den = 2 + np.floor(hash_uniform(uid, 3) * 4)[:, None]
    share = np.where(b == 0, 0.45, np.where((b >= 1) & (b <= n_den), 0.40 / n_den, 0.0))
    side = (b >= 6) & (b < 10) & (s > 0.35 + 0.12 * (b - 6))
    share = share + np.where(side, 0.15 / 4, 0.0)
    l_neuron = total * share * (0.7 + 0.6 * u)

    # Oligodendrocyte: 4-6 primary processes of 20-50 µm, ten secondaries: a fine web.
    n_pri = 4 + np.floor(hash_uniform(uid, 4) * 3)[:, None]
    l_oligo = np.where(b < n_pri, 22.0 + 28.0 * u, np.where(b >= 6, 12.0 + 14.0 * u, 0.0)) * size

    l_fate = np.select([fate == NEURON, fate == OLIGODENDROCYTE], [l_neuron, l_oligo], 0.0)
    length = (1.0 - s) * l_nsc + s * l_fate
    length = np.where((st.dead | st.mitotic)[:, None], 0.0, length)

    parent = np.where(b >= 6, np.where(fate == OLIGODENDROCYTE, (b - 6) % n_pri, (b - 6) % (1 + n_den)), -1)
    parent = np.broadcast_to(parent, (n, B)).astype(np.int64)
    along = 0.25 + 0.55 * hash_uniform(uid[:, None], b, 5)
    return length, parent, along


def _branch_vertices(cells: Cells, st: CellState, length_px: np.ndarray, parent: np.ndarray, along: np.ndarray,
                     cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    uid = cells.uid[st.index]
    n = len(uid)
    b = np.arange(B)[None, :]
    base = 2 * np.pi * hash_uniform(uid[:, None], b, 6)
    # Bipolar NSCs and neurons: the second primary leaves opposite the first.
    base[:, 1] = np.where(st.fate != OLIGODENDROCYTE, base[:, 0] + np.pi + 0.4 * (hash_uniform(uid, 7) - 0.5),
                          base[:, 1])
    turns = hash_normal(uid[:, None, None], b[:, :, None], np.arange(S)[None, None, :]) * TURN_SD[st.fate][:, None, None]
    # Neurites curve (a steady bend per branch) and fasciculate: each step turns towards the
    # local orientation of a field-wide flow, so neurites of neighbouring cells run side by
    # side in bundles. The pull grows with commitment; OL webs and NSC processes ignore it.
    bend = (CURVE_SD * hash_normal(uid[:, None], b, 12))[:, :, None] * np.ones(S)
    pull = np.where(st.fate == NEURON, FASCICLE_PULL * st.s, 0.0)[:, None]
    flow = _flow(uid)
    step = length_px / S
    v = np.zeros((n, B, S + 1, 2))
    theta = base.copy()
    for k in range(S):
        ax, ay = cx[:, None] + v[:, :, k, 0], cy[:, None] + v[:, :, k, 1]
        psi = flow[0] * np.sin(ax / flow[1] + flow[2]) + flow[3] * np.sin(ay / flow[4] + flow[5]) + flow[6]
        theta = theta + turns[:, :, k] + bend[:, :, k] + pull * 0.5 * np.sin(2.0 * (psi - theta))
        v[:, :, k + 1, 0] = v[:, :, k, 0] + step * np.cos(theta)
        v[:, :, k + 1, 1] = v[:, :, k, 1] + step * np.sin(theta)
    rows = np.arange(n)[:, None]
    k = np.round(along * S).astype(np.int64)
    origin = v[rows, np.maximum(parent, 0), k]  # parents are primaries, already relative
    v += np.where((parent >= 0)[:, :, None, None], origin[:, :, None, :], 0.0)
    v[..., 0] += cx[:, None, None]
    v[..., 1] += cy[:, None, None]
    return v


def _flow(uid: np.ndarray) -> tuple[np.ndarray, ...]:
    """Parameters of one field's neurite flow: orientation psi(x, y) = a sin(x / Lx + p) +
    b sin(y / Ly + q) + psi0 (px). A field's cells share the high bits of their uid."""
    key = (uid >> 20)[:, None]
    u = [hash_uniform(key, 99, j) for j in range(7)]
    return (1.2 * u[0], 120.0 + 250.0 * u[1], 2 * np.pi * u[2], 1.2 * u[3], 120.0 + 250.0 * u[4],
            2 * np.pi * u[5], np.pi * u[6])


def draw_cells(cells: Cells, st: CellState, hours: float, shape: tuple[int, int], px_um: float,
               offset_px: tuple[float, float] = (0.0, 0.0),
               extra: tuple[raster.Splat, raster.Splat] = (raster.EMPTY, raster.EMPTY)) -> tuple[np.ndarray, np.ndarray]:
    """(phi, bright) maps, each (H, W) float64, for the cells in ``st`` plus ``extra`` splats
    (debris) so each map is painted in one pass."""
    h, w = shape
    cx = st.x / px_um + offset_px[0]
    cy = st.y / px_um + offset_px[1]
    f, s = st.fate.astype(int), st.s
    size = cells.size[st.index]
    nsc = UNDIFFERENTIATED
    rad = size * (SOMA_R[nsc] + s * (SOMA_R[f] - SOMA_R[nsc])) / px_um
    aspect = cells.aspect[st.index] + s * SOMA_ASPECT[f]
    phi_s = SOMA_PHI[nsc] + s * (SOMA_PHI[f] - SOMA_PHI[nsc])
    uid = cells.uid[st.index]
    # How rounded (thick, so phase-bright) a cell is varies from cell to cell.
    bright = (SOMA_BRIGHT[nsc] + s * (SOMA_BRIGHT[f] - SOMA_BRIGHT[nsc])) * (0.3 + 1.4 * hash_uniform(uid, 13))
    # Mitotic cells round up into phase-bright spheres; dead cells shrink to bright debris.
    rad = np.where(st.mitotic, 6.0 / px_um, np.where(st.dead, 3.5 * size / px_um, rad))
    aspect = np.where(st.mitotic | st.dead, 1.0, aspect)
    phi_s = np.where(st.mitotic | st.dead, 1.2, phi_s)
    bright = np.where(st.mitotic, 1.0, np.where(st.dead, 1.6, bright))
    theta = cells.angle[st.index]
    phi_parts = [extra[0]]
    phi_parts.append(raster.ellipses(shape, cx, cy, rad * np.sqrt(aspect), rad / np.sqrt(aspect), theta, phi_s))
    phi_parts.append(_blebs(shape, uid, cx, cy, rad, phi_s, ~(st.mitotic | st.dead)))
    lit = bright > 0.02
    br_splat = raster.ellipses(shape, cx[lit], cy[lit], 0.8 * rad[lit] * np.sqrt(aspect[lit]),
                         0.8 * rad[lit] / np.sqrt(aspect[lit]), theta[lit], bright[lit], power=1.0)

    sheet_map = _sheet_map(st, size, uid, cx, cy, shape, px_um)

    length, parent, along = branch_lengths(cells, st, hours)
    has = np.flatnonzero((length > 0.5 * px_um).any(axis=1) & (cx > -400) & (cx < w + 400) & (cy > -400) & (cy < h + 400))
    if len(has):
        sub = _subset(st, has)
        v = _branch_vertices(cells, sub, length[has] / px_um, parent[has], along[has], cx[has], cy[has])
        taper = 1.0 - 0.6 * (np.arange(S) + 0.5)[None, None, :] / S
        ls = LINE_PHI[nsc] + s[has] * (LINE_PHI[f[has]] - LINE_PHI[nsc])
        wgt = (ls[:, None, None] * taper) * (length[has] > 0)[:, :, None]
        phi_parts.append(raster.polylines(shape, v.reshape(-1, S + 1, 2),
                                          np.broadcast_to(wgt, (len(has), B, S)).reshape(-1, S)))
    phi = raster.paint(shape, *phi_parts)
    phi += sheet_map
    return phi, raster.paint(shape, br_splat, extra[1])


def _sheet_map(st: CellState, size: np.ndarray, uid: np.ndarray, cx: np.ndarray, cy: np.ndarray,
               shape: tuple[int, int], px_um: float) -> np.ndarray:
    """Flat sheets: astrocytes spread into large low sheets (stellate or polygonal); mature
    oligodendrocytes add faint veils. Both are near background after shade-off."""
    h, w = shape
    f, s = st.fate.astype(int), st.s
    astro = (f == ASTROCYTE) & (s > 0.03) & ~st.dead & ~st.mitotic
    oligo = (f == OLIGODENDROCYTE) & (s > 0.5) & ~st.dead & ~st.mitotic
    sheet = astro | oligo
    ua = uid[sheet]
    stellate = hash_uniform(ua, 8) < 0.45
    k = np.arange(5)[None, :]
    amp = np.where(stellate[:, None], np.where(k >= 2, 0.22, 0.04), np.where(k < 2, 0.14, 0.03))
    lobes = np.stack([amp * (0.5 + hash_uniform(ua[:, None], k, 9)), 2 * np.pi * hash_uniform(ua[:, None], k, 10)],
                     axis=2)
    r_astro = size[sheet] * (6.0 + s[sheet] * (22.0 + 28.0 * hash_uniform(ua, 11))) / px_um
    r_oligo = size[sheet] * 30.0 * s[sheet] / px_um
    is_astro = astro[sheet]
    # Sheets are smooth and faint: drawn on a grid SHEET_BIN times coarser and upsampled, which
    # cuts their cost by ~SHEET_BIN^2 (a confluent astrocyte carpet dominated the frame time).
    small = (-(-h // SHEET_BIN), -(-w // SHEET_BIN))
    sheets = raster.stars(small, (cx[sheet] + 0.5) / SHEET_BIN - 0.5, (cy[sheet] + 0.5) / SHEET_BIN - 0.5,
                          np.where(is_astro, r_astro, r_oligo) / SHEET_BIN, lobes,
                          np.where(is_astro, 0.30 * np.minimum(1.0, 3 * s[sheet]), 0.06 * s[sheet] ** 2))
    return upsample(raster.paint(small, sheets), SHEET_BIN, shape)


def _blebs(shape: tuple[int, int], uid: np.ndarray, cx: np.ndarray, cy: np.ndarray, rad: np.ndarray,
           height: np.ndarray, live: np.ndarray) -> raster.Splat:
    """Two lobes per spread cell, off-centre by 0.5-0.9 of the radius: somata that are not
    ellipses (lamellipodia, a nucleus pushed aside) and that merge where cells touch."""
    idx = np.flatnonzero(live)
    k = np.arange(2)[None, :]
    u = uid[idx, None]
    ang = 2 * np.pi * hash_uniform(u, k, 14)
    dist = rad[idx, None] * (0.5 + 0.4 * hash_uniform(u, k, 15))
    r = rad[idx, None] * (0.45 + 0.3 * hash_uniform(u, k, 16))
    h = height[idx, None] * (0.5 + 0.4 * hash_uniform(u, k, 17))
    return raster.ellipses(shape, (cx[idx, None] + dist * np.cos(ang)).ravel(), (cy[idx, None] + dist * np.sin(ang)).ravel(),
                           r.ravel(), (0.8 * r).ravel(), ang.ravel(), h.ravel())


def _subset(st: CellState, sel: np.ndarray) -> CellState:
    """The rows ``sel`` of a CellState."""
    return CellState(index=st.index[sel], x=st.x[sel], y=st.y[sel], s=st.s[sel], fate=st.fate[sel],
                     dead=st.dead[sel], mitotic=st.mitotic[sel])
