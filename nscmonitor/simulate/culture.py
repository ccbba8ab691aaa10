"""The culture: plate maps, conditions and the cells of one field over time (science.md §3.2-3.4).

A field's cells are drawn once, at seeding, with every event of their lives fixed in advance:
birth time (seeded cells exist from the start, daughters appear at a division), death time,
fate, commitment midpoint t50 and slope tau, and a slow wobble for migration. The state at any
hour is then a pure function of those numbers (:func:`state_at`), so time point 60 never
needs time points 0-58 and the same cell keeps its identity across frames.

Departures from the spec, and why:
* Proliferation follows a logistic curve per fate group and daughters are placed next to a
  random earlier cell of the same group, instead of per-cell cell cycles. It reaches the
  same population curve and confluence cap analytically, which per-cell cycles with a
  density limit could only do by simulating time forward.
* Neuron-fated cells do not divide after induction (the spec makes neurons post-mitotic;
  we also drop their last divisions before commitment).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nscmonitor.core.domain import MULTICLASS, PLATE_SHAPES, parse_well, well_name
from nscmonitor.core.errors import UserFacingError
from nscmonitor.simulate.biology import WellBiology, condition_set, plate_biology, well_biology
from nscmonitor.simulate.seeds import rng_for

NEURON, ASTROCYTE, OLIGODENDROCYTE, UNDIFFERENTIATED = range(4)

# Hours; the commitment midpoint per fate (science.md §3.4: 48 h neurons, 60 h astrocytes,
# 72-96 h oligodendrocytes) and its spread between cells.
T50_MEAN = np.array([48.0, 60.0, 84.0, np.inf])
T50_SD = 14.0
T50_MIN_H = 6.0  # no cell's midpoint before the first neurites could show (science.md §3.4)
DEAD_VISIBLE_H = 18.0  # a dead cell stays as phase-bright debris this long, then detaches
MITOSIS_H = 1.0  # mother and daughter are rounded up (phase-bright) this long around division
MARGIN_UM = 70.0  # cells are seeded beyond the frame so processes enter from outside

# Well geometry (µm): radius of the imaged well bottom, used for edge fields and bubbles.
WELL_RADIUS_UM = {24: 7800.0, 48: 5500.0, 96: 3200.0, 384: 1700.0}


@dataclass(frozen=True)
class Condition:
    """What a well was given. ``fractions`` are the shares of cells heading to each class of
    MULTICLASS; the undifferentiated share never commits. ``induced=False`` is the control
    with growth factors kept: every cell stays an NSC and keeps dividing."""

    name: str
    fractions: tuple[float, float, float, float]
    induced: bool = True
    t50_scale: float = 1.0

    @property
    def label(self) -> str:
        return MULTICLASS[int(np.argmax(self.fractions))]

    @property
    def binary(self) -> str | None:
        """Neuron vs glia from the summed shares (science.md: P(neuron) vs P(astrocyte) +
        P(oligodendrocyte)), so a 'mixed' well whose 4-class winner is neuron is glia here.
        None when undifferentiated cells outnumber both sides: such a well has no answer."""
        neuron, astro, oligo, undiff = self.fractions
        if max(neuron, astro + oligo) < undiff:
            return None
        return "neuron" if neuron > astro + oligo else "glia"


DEFAULT_CONDITIONS: dict[str, Condition] = {
    c.name: c
    for c in (
        Condition("neuron-directed", (0.65, 0.12, 0.03, 0.20)),
        Condition("astrocyte-directed", (0.10, 0.65, 0.05, 0.20)),
        Condition("oligodendrocyte-directed", (0.10, 0.22, 0.50, 0.18)),
        Condition("mixed", (0.36, 0.34, 0.08, 0.22)),
        Condition("undifferentiated", (0.0, 0.0, 0.0, 1.0), induced=False),
        Condition("neuron-low-dose", (0.42, 0.18, 0.03, 0.37), t50_scale=1.3),
    )
}


def export_conditions(entries: dict[str, dict] | None) -> dict[str, Condition]:
    """The conditions a tiles export was rendered with: its tiles.json ``conditions``
    (``asdict(Condition)`` entries) over the defaults, so labels follow what was rendered."""
    out = dict(DEFAULT_CONDITIONS)
    for name, c in (entries or {}).items():
        if c.get("fractions") is not None:
            out[name] = Condition(name, tuple(float(v) for v in c["fractions"]), bool(c.get("induced", True)),
                                  float(c.get("t50_scale", 1.0)))
    return out


def plate_conditions(name: str = "recipes", *, seed: int = 0, plate: int = 0, n: int = 5,
                     recipes: tuple[str, ...] | None = None) -> dict[str, Condition]:
    """The conditions of one plate in condition set ``name`` (biology.CONDITION_SETS):
    ``recipes`` are the fixed recipes (all of DEFAULT_CONDITIONS, or the names given), the
    same on every plate; ``dose`` and ``mixtures`` are drawn per plate."""
    if name == "recipes":
        return {c: DEFAULT_CONDITIONS[c] for c in (recipes or DEFAULT_CONDITIONS)}
    drawn = condition_set(name, seed=seed, plate=plate, n=n)
    return {k: Condition(k, fr, induced, scale) for k, (fr, induced, scale) in drawn.items()}


@dataclass(frozen=True)
class ConditionMap:
    """Which simulated condition each well of a simulated plate holds (the daemon's plate map,
    ``core.platemap.PlateMap``, is what a lab writes about its own plate)."""

    plate_format: int
    wells: dict[str, str]  # canonical well -> condition name
    conditions: dict[str, Condition] = field(default_factory=lambda: dict(DEFAULT_CONDITIONS))

    def condition(self, well: str) -> Condition:
        return self.conditions[self.wells[well]]

    def wells_of(self, condition: str) -> list[str]:
        return [w for w, c in self.wells.items() if c == condition]


def all_wells(plate_format: int) -> list[str]:
    rows, cols = _shape(plate_format)
    return [well_name(r, c) for r in range(rows) for c in range(cols)]


def _shape(plate_format: int) -> tuple[int, int]:
    if plate_format not in WELL_RADIUS_UM:
        raise UserFacingError(f"plate format {plate_format} not supported (24, 48, 96 or 384)")
    return PLATE_SHAPES[plate_format]


def default_plate_map(plate_format: int = 96, conditions: dict[str, Condition] | None = None) -> ConditionMap:
    """Conditions in blocks of adjacent columns, as a bench scientist lays them out."""
    conditions = dict(conditions or DEFAULT_CONDITIONS)
    names = list(conditions)
    rows, cols = _shape(plate_format)
    blocks = min(len(names), cols)
    wells = {well_name(r, c): names[c * blocks // cols] for r in range(rows) for c in range(cols)}
    return ConditionMap(plate_format, wells, conditions)


def load_condition_map(path: str | Path, plate_format: int = 96) -> ConditionMap:
    """Read ``well,condition[,neuron,astrocyte,oligodendrocyte,undifferentiated[,induced]]``.

    Condition names known in DEFAULT_CONDITIONS need no fractions; a new name must bring them
    (they are normalised to sum to one). Wells not listed are not imaged.
    """
    conditions = dict(DEFAULT_CONDITIONS)
    wells: dict[str, str] = {}
    valid = set(all_wells(plate_format))
    with open(path, newline="", encoding="utf-8-sig") as fh:
        for n, row in enumerate(csv.DictReader(fh), start=2):
            try:
                well = well_name(*parse_well(row["well"]))
                name = row["condition"].strip()
            except (KeyError, ValueError, AttributeError) as exc:
                raise UserFacingError(f"{path}:{n}: need columns well,condition ({exc})") from exc
            if well not in valid:
                raise UserFacingError(f"{path}:{n}: well {well} is not on a {plate_format}-well plate")
            if all(row.get(k) not in (None, "") for k in MULTICLASS):
                fr = np.array([float(row[k]) for k in MULTICLASS])
                if fr.min() < 0 or fr.sum() <= 0:
                    raise UserFacingError(f"{path}:{n}: fate fractions must be >= 0 and not all 0")
                induced = str(row.get("induced", "") or "true").strip().lower() not in ("0", "false", "no")
                conditions[name] = Condition(name, tuple(float(v) for v in fr / fr.sum()), induced)
            elif name not in conditions:
                raise UserFacingError(
                    f"{path}:{n}: unknown condition {name!r}: add columns {','.join(MULTICLASS)}"
                )
            wells[well] = name
    if not wells:
        raise UserFacingError(f"{path}: no wells")
    used = {c: conditions[c] for c in dict.fromkeys(wells.values())}
    return ConditionMap(plate_format, wells, used)


@dataclass(frozen=True)
class Cells:
    """Every cell that ever lives in one field (µm, field coordinates; hours since induction).
    ``uid`` keys the hashed per-cell geometry; ``parent`` is -1 for seeded cells."""

    uid: np.ndarray
    x: np.ndarray
    y: np.ndarray
    fate: np.ndarray
    commits: np.ndarray
    t50: np.ndarray
    tau: np.ndarray
    birth: np.ndarray
    death: np.ndarray
    parent: np.ndarray
    size: np.ndarray
    angle: np.ndarray
    aspect: np.ndarray
    wobble: np.ndarray  # (N, 4): amplitude µm, angular frequency rad/h, phase x, phase y
    width_um: float
    height_um: float

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class CellState:
    """The cells drawn at one hour: indices into Cells, position, commitment, flags."""

    index: np.ndarray
    x: np.ndarray
    y: np.ndarray
    s: np.ndarray
    fate: np.ndarray
    dead: np.ndarray
    mitotic: np.ndarray


def _logistic_births(n0: int, rate: float, cap: float, horizon: float) -> np.ndarray:
    """Birth times that make a group of n0 cells follow N(t) = cap / (1 + (cap/n0 - 1) e^{-rt})."""
    if n0 <= 0 or rate <= 0 or cap <= n0 + 1:
        return np.empty(0)
    n_end = cap / (1 + (cap / n0 - 1) * np.exp(-rate * horizon))
    targets = n0 + np.arange(int(n_end - n0)) + 0.5
    return np.log(targets / (cap - targets) * (cap - n0) / n0) / rate


def _founders(rng: np.random.Generator, condition: Condition, biology: WellBiology, wx: float,
              wy: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cells seeded at induction: positions (partly in clusters), fates and commitment
    mid-times. Seeding density and clustering do not depend on the condition."""
    area_mm2 = wx * wy * 1e-6
    n0 = max(1, rng.poisson(biology.density_mm2 * area_mm2))
    clustered = rng.random(n0) < 0.4
    n_clusters = max(1, int(area_mm2 * 6))
    centres = rng.uniform((0, 0), (wx, wy), size=(n_clusters, 2))
    pick = centres[rng.integers(0, n_clusters, n0)] + rng.normal(0, 28.0, (n0, 2))
    xy = np.where(clustered[:, None], pick, rng.uniform((0, 0), (wx, wy), size=(n0, 2)))
    fractions = np.asarray(biology.fractions, dtype=float)
    fate0 = (
        rng.choice(4, size=n0, p=fractions / fractions.sum())
        if condition.induced
        else np.full(n0, UNDIFFERENTIATED)
    )
    t50_0 = np.maximum(rng.normal(T50_MEAN[fate0] * condition.t50_scale + biology.t50_shift_h, T50_SD), T50_MIN_H)
    return xy, fate0, t50_0


def _growth_groups(induced: bool) -> list[tuple[int, float, float]]:
    """Growth groups: (fate, doubling rate 1/h, confluence cap per mm²). Control NSCs keep
    growth factors and double daily; after withdrawal division slows (science.md §3.2)."""
    if induced:
        # Uncommitted cells nearly stop dividing without mitogens; astrocyte precursors and
        # OPCs keep a slow cycle. (Faster undifferentiated growth would let the 20 % that never
        # commit outnumber the committed cells by day 5, which no differentiation protocol shows.)
        return [(UNDIFFERENTIATED, np.log(2) / 110, 450.0), (ASTROCYTE, np.log(2) / 45, 300.0),
                (OLIGODENDROCYTE, np.log(2) / 70, 300.0)]
    return [(UNDIFFERENTIATED, np.log(2) / 26, 1700.0)]


def _births(rng: np.random.Generator, fate0: np.ndarray, groups: list[tuple[int, float, float]], area_mm2: float,
            horizon_h: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every cell's birth time, parent (-1 for a founder) and fate, founders first, each
    group's daughters following its logistic growth."""
    n0 = len(fate0)
    births, bfate, bparent = [np.empty(0)], [np.empty(0, int)], [np.empty(0, int)]
    for fate, rate, cap in groups:
        members = np.flatnonzero(fate0 == fate)
        times = _logistic_births(len(members), rate, cap * area_mm2, horizon_h)
        # Parent k-th daughter on a random cell of the group that already existed; daughters
        # of daughters are allowed (index into the growing list), so clones form clusters.
        pool_pos = rng.random(len(times))
        parents = np.empty(len(times), dtype=int)
        lineage = list(members)
        first = n0 + sum(len(b) for b in births[1:])
        for k in range(len(times)):
            parents[k] = lineage[int(pool_pos[k] * len(lineage))]
            lineage.append(first + k)
        births.append(times)
        bfate.append(np.full(len(times), fate))
        bparent.append(parents)
    birth_t = np.concatenate([np.full(n0, -1e3)] + births[1:])
    parent = np.concatenate([np.full(n0, -1)] + bparent[1:])
    return birth_t, parent, np.concatenate([fate0] + bfate[1:])


def _place_daughters(rng: np.random.Generator, xy: np.ndarray, t50_0: np.ndarray,
                     parent: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions and commitment mid-times of all cells: a daughter sits a cell's length from
    its parent and inherits its timing with a little jitter."""
    n0, n = len(xy), len(parent)
    x = np.concatenate([xy[:, 0], np.zeros(n - n0)])
    y = np.concatenate([xy[:, 1], np.zeros(n - n0)])
    t50 = np.concatenate([t50_0, np.zeros(n - n0)])
    offs = rng.normal(0, 1, (n - n0, 2))
    offs *= (12.0 / np.maximum(np.hypot(offs[:, 0], offs[:, 1]), 1e-6))[:, None]
    jitter = rng.normal(0, 4.0, n - n0)
    for k in range(n0, n):  # parents always precede daughters, so one forward pass places all
        p = parent[k]
        x[k], y[k] = x[p] + offs[k - n0, 0], y[p] + offs[k - n0, 1]
        t50[k] = t50[p] + jitter[k - n0]
    return x, y, t50


def _deaths(rng: np.random.Generator, induced: bool, death_fraction: float, birth_t: np.ndarray,
            horizon_h: float) -> np.ndarray:
    """Death times (inf: lives on): withdrawal kills a share of the cells in the first days."""
    n = len(birth_t)
    death = np.full(n, np.inf)
    if induced:
        dies = rng.random(n) < death_fraction
        death[dies] = rng.uniform(4.0, 72.0, dies.sum())
    else:
        dies = rng.random(n) < 0.03
        death[dies] = rng.uniform(0.0, horizon_h, dies.sum())
    return np.maximum(death, birth_t + 2.0)


def seed_field(
    condition: Condition,
    *,
    width_um: float,
    height_um: float,
    seed: int,
    plate: int,
    well: str,
    field_index: int,
    horizon_h: float = 336.0,
    biology: WellBiology | None = None,
) -> Cells:
    """Draw one field's cells and their whole future. Seeding density and clustering do not
    depend on the condition, so nothing but differentiation separates wells. ``biology`` is
    the well's draw (fate shares, timing, density, deaths); by default the plate's and
    well's own draw from the seed (biology.py)."""
    if biology is None:
        biology = well_biology(condition.fractions, condition.induced, plate_biology(seed, plate),
                               seed=seed, plate_index=plate, well=well)
    rng = rng_for(seed, plate, well, field_index, "culture")
    wx, wy = width_um + 2 * MARGIN_UM, height_um + 2 * MARGIN_UM
    area_mm2 = wx * wy * 1e-6
    xy, fate0, t50_0 = _founders(rng, condition, biology, wx, wy)
    birth_t, parent, fate = _births(rng, fate0, _growth_groups(condition.induced), area_mm2, horizon_h)
    n = len(birth_t)
    x, y, t50 = _place_daughters(rng, xy, t50_0, parent)
    x -= MARGIN_UM
    y -= MARGIN_UM
    death = _deaths(rng, condition.induced, biology.death_fraction, birth_t, horizon_h)
    wobble = np.column_stack([
        rng.uniform(2.0, 7.0, n), 2 * np.pi / rng.uniform(18.0, 60.0, n),
        rng.uniform(0, 2 * np.pi, n), rng.uniform(0, 2 * np.pi, n),
    ])
    return Cells(
        uid=(np.arange(n, dtype=np.int64) + (rng.integers(0, 2**31) << 20)),
        x=x, y=y, fate=fate.astype(np.int8),
        commits=(fate != UNDIFFERENTIATED) & condition.induced,
        t50=t50, tau=rng.uniform(8.0, 16.0, n), birth=birth_t, death=death, parent=parent,
        size=rng.lognormal(0.0, 0.13, n), angle=rng.uniform(0, np.pi, n),
        aspect=rng.uniform(1.0, 1.45, n), wobble=wobble,
        width_um=float(width_um), height_um=float(height_um),
    )


def _logistic(hours: float, cells: Cells) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip((hours - cells.t50) / cells.tau, -50, 50)))


def commitment(cells: Cells, hours: float) -> np.ndarray:
    """s(t) = (L(t) - L(0)) / (1 - L(0)) with L(t) = 1 / (1 + exp(-(t - t50) / tau)) for
    committing cells; 0 for the others. Taking L(0) off makes s exactly 0 at induction: a
    plain logistic with t50 ~ N(48, 14) h already had a fifth of neuron-fated cells
    visibly committed at 0 h, a fate signal before the inducer was given."""
    l0 = _logistic(0.0, cells)
    s = np.clip((_logistic(hours, cells) - l0) / (1.0 - l0), 0.0, 1.0)
    return np.where(cells.commits & (hours >= 0), s, 0.0)


def state_at(cells: Cells, hours: float) -> CellState:
    """The cells present at ``hours`` (alive, or dead but not yet detached)."""
    present = (cells.birth <= hours) & (hours < cells.death + DEAD_VISIBLE_H)
    idx = np.flatnonzero(present)
    w = cells.wobble[idx]
    settle = 1.0 - 0.7 * commitment(cells, hours)[idx]  # committed cells migrate less
    x = cells.x[idx] + w[:, 0] * settle * np.sin(w[:, 1] * hours + w[:, 2])
    y = cells.y[idx] + w[:, 0] * settle * np.sin(w[:, 1] * hours + w[:, 3])
    recent = (hours - cells.birth >= 0) & (hours - cells.birth < MITOSIS_H)
    mitotic = np.zeros(len(cells), bool)
    mitotic[recent] = True
    mitotic[cells.parent[recent]] = True
    return CellState(
        index=idx, x=x, y=y, s=commitment(cells, hours)[idx], fate=cells.fate[idx],
        dead=(cells.death[idx] <= hours), mitotic=mitotic[idx],
    )


def class_counts(state: CellState, x0: float = 0, y0: float = 0, x1: float = np.inf, y1: float = np.inf) -> np.ndarray:
    """Live cells per class of MULTICLASS whose centre lies in [x0, x1) x [y0, y1) (µm)."""
    inside = ~state.dead & (state.x >= x0) & (state.x < x1) & (state.y >= y0) & (state.y < y1)
    return np.bincount(state.fate[inside].astype(int), minlength=4)
