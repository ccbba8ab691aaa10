"""What differs between plates and wells beyond the recipe, and conditions beyond the recipes.

Two plates given the same recipe never behave alike: one differentiates faster or more
completely, was seeded denser, lost more cells after the medium change. A simulator whose
plates differ only in optics lets a model learn the recipes instead of fate, and a held-out
plate then tests recognition rather than prediction. So every plate draws, from its own
seed, a timing shift, an efficiency, a density and a viability (:class:`PlateBiology`), and
every well adds its own biological noise on top (:class:`WellBiology`): the fate shares it
actually got, its timing, its density and its death rate. Both are pure functions of
(seed, plate, well), recorded in the ground truth, so any frame can be recomputed.

Condition sets (``recipes``, ``dose``, ``mixtures``): the five recipes are fixed; ``dose``
draws each plate's own doses of a neuronal inducer on a log axis and ``mixtures`` each
plate's own Dirichlet fate shares, so a test plate holds conditions no training plate had.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from nscmonitor.core.errors import UserFacingError
from nscmonitor.simulate.seeds import rng_for

CONDITION_SETS = ("recipes", "dose", "mixtures")
T50_SHIFT_MAX_H = 12.0


@dataclass(frozen=True)
class PlateBiology:
    """One plate's draw: added to every cell's t50 (hours), the factor on every committing
    share (the cells it removes stay undifferentiated), on seeding density, and the share of
    cells that die after induction."""

    t50_shift_h: float = 0.0
    efficiency: float = 1.0
    density_scale: float = 1.0
    death_fraction: float = 0.12

    def record(self) -> dict[str, float]:
        return {f"plate_{k}": round(float(v), 4) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class WellBiology:
    """One well's draw on top of its plate's: the fate shares it got (neuron, astrocyte,
    oligodendrocyte, undifferentiated), its t50 shift (plate's plus its own), seeding
    density (cells/mm²) and death share after induction."""

    fractions: tuple[float, float, float, float]
    t50_shift_h: float
    density_mm2: float
    death_fraction: float

    def record(self) -> dict[str, float]:
        names = ("neuron", "astrocyte", "oligodendrocyte", "undifferentiated")
        out = {f"well_frac_{n}": round(float(v), 4) for n, v in zip(names, self.fractions)}
        out.update(well_t50_shift_h=round(self.t50_shift_h, 3), well_density_mm2=round(self.density_mm2, 1),
                   well_death_fraction=round(self.death_fraction, 4))
        return out


def plate_biology(seed: int, plate: int, vary: bool = True) -> PlateBiology:
    """``vary=False``: the nominal plate (every recipe as written), for tests of the recipes."""
    if not vary:
        return PlateBiology()
    rng = rng_for(seed, plate, "biology")
    return PlateBiology(
        t50_shift_h=float(rng.uniform(-T50_SHIFT_MAX_H, T50_SHIFT_MAX_H)),
        efficiency=float(rng.uniform(0.8, 1.1)),
        density_scale=float(rng.uniform(0.75, 1.3)),
        death_fraction=float(rng.uniform(0.05, 0.20)),
    )


def well_biology(fractions, induced: bool, plate: PlateBiology, *, seed: int, plate_index: int, well: str,
                 vary: bool = True) -> WellBiology:
    """The plate's draw applied to a condition's fate shares, plus the well's own noise: a
    Dirichlet draw around the shares (concentration 120: a 0.35 share varies by ~0.04), t50
    +-3 h, density +-10 %, death share +-0.02. Control wells (not induced) never commit."""
    fr = np.asarray(fractions, dtype=float)
    fr = fr / fr.sum()
    rng = rng_for(seed, plate_index, well, "biology")
    committed = fr[:3] * plate.efficiency
    if committed.sum() > 0.97:
        committed *= 0.97 / committed.sum()
    fr = np.append(committed, 1.0 - committed.sum()) if induced else fr
    noise = rng.dirichlet(120.0 * fr + 1e-3) if (vary and induced) else fr
    shift = rng.normal(0.0, 3.0) if vary else 0.0
    density = 300.0 * plate.density_scale * (rng.lognormal(0.0, 0.1) if vary else 1.0)
    death = plate.death_fraction + (rng.normal(0.0, 0.02) if vary else 0.0)
    return WellBiology(
        fractions=tuple(float(v) for v in noise),
        t50_shift_h=float(plate.t50_shift_h + shift),
        density_mm2=float(density),
        death_fraction=float(np.clip(death, 0.02, 0.4)),
    )


def dose_response(dose: float) -> tuple[tuple[float, float, float, float], float]:
    """Fate shares and t50 scale at a dose of a neuronal inducer (units of its EC50), a Hill
    curve of slope 1: from a glial, slow serum-withdrawal outcome at dose 0 to a neuronal,
    faster one at saturation. The neuron share passes the astrocyte share near dose 1."""
    h = dose / (dose + 1.0)
    fr = (0.08 + 0.62 * h, 0.62 - 0.50 * h, 0.05, 0.25 - 0.12 * h)
    return fr, 1.3 - 0.3 * h


def condition_set(name: str, *, seed: int, plate: int, n: int = 5) -> dict[str, tuple]:
    """``n`` conditions for one plate as (fractions, induced, t50_scale) by name; ``recipes``
    is resolved by the caller (the fixed recipes). ``dose``: the first plate of a seed gets
    doses spread over 0.03-30 EC50 on a log axis, later plates their own random doses;
    ``mixtures``: Dirichlet committed shares (oligodendrocytes rare: concentration 0.4 against
    1.2) and 5-30 % never committing, one undifferentiated control when n >= 5."""
    if name not in CONDITION_SETS:
        raise UserFacingError(f"condition set {name!r}: choose one of {', '.join(CONDITION_SETS)}")
    rng = rng_for(seed, plate, "conditions", name)
    out: dict[str, tuple] = {}
    if name == "dose":
        grid = np.geomspace(0.03, 30.0, n) if plate == 0 else np.sort(np.exp(rng.uniform(np.log(0.03), np.log(30.0), n)))
        for d in grid:
            fr, scale = dose_response(float(d))
            out[f"neuron-dose-{d:.3g}"] = (fr, True, scale)
    elif name == "mixtures":
        k = n - 1 if n >= 5 else n
        for i in range(k):
            committed = rng.dirichlet((1.2, 1.2, 0.4)) * (1.0 - rng.uniform(0.05, 0.30))
            fr = (*(float(v) for v in committed), float(1.0 - committed.sum()))
            out[f"mixture-p{plate + 1}-{i + 1}"] = (fr, True, float(rng.uniform(0.85, 1.2)))
        if k < n:
            out["undifferentiated"] = ((0.0, 0.0, 0.0, 1.0), False, 1.0)
    return out
