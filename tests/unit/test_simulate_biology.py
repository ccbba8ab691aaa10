"""Plate-to-plate and well-to-well biology, condition sets, and no fate at induction."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from nscmonitor.core.errors import UserFacingError
from nscmonitor.simulate import Camera, Microscope
from nscmonitor.simulate.biology import T50_SHIFT_MAX_H, plate_biology, well_biology
from nscmonitor.simulate.culture import (
    DEFAULT_CONDITIONS, NEURON, UNDIFFERENTIATED, commitment, plate_conditions, seed_field,
)
from nscmonitor.simulate.labelled_tiles import export_tiles

TINY = Camera(shape=(48, 64))


def test_plate_draws_are_reproducible_from_the_seed_and_differ_between_plates():
    draws = [plate_biology(7, p) for p in range(6)]
    assert draws == [plate_biology(7, p) for p in range(6)]
    assert len({d.t50_shift_h for d in draws}) == 6 and len({d.efficiency for d in draws}) == 6
    assert all(abs(d.t50_shift_h) <= T50_SHIFT_MAX_H for d in draws)
    assert max(d.t50_shift_h for d in draws) - min(d.t50_shift_h for d in draws) > 6.0
    assert plate_biology(7, 0, vary=False).t50_shift_h == 0.0


def test_the_manifest_records_every_plate_and_well_draw(tmp_path):
    scope = Microscope(fields=1, hours=0, seed=11, plate_index=2, wells=["A01", "A03", "B01"], camera=TINY)
    rows = [f.truth for f in scope.frames()]
    plate = plate_biology(11, 2)
    for r in rows:
        assert r["plate_t50_shift_h"] == pytest.approx(plate.t50_shift_h, abs=1e-4)
        assert r["plate_efficiency"] == pytest.approx(plate.efficiency, abs=1e-4)
        cond = DEFAULT_CONDITIONS[r["condition"]]
        well = well_biology(cond.fractions, cond.induced, plate, seed=11, plate_index=2, well=r["well"])
        assert r["well_t50_shift_h"] == pytest.approx(well.t50_shift_h, abs=1e-3)
        assert r["well_frac_neuron"] == pytest.approx(well.fractions[NEURON], abs=1e-4)
        assert r["well_density_mm2"] == pytest.approx(well.density_mm2, abs=0.1)
    a01, b01 = (next(r for r in rows if r["well"] == w) for w in ("A01", "B01"))
    assert a01["condition"] == b01["condition"] and a01["well_frac_neuron"] != b01["well_frac_neuron"]  # well noise
    scope.run(tmp_path, speed=0)
    header = (tmp_path / "simulation-manifest.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    assert {"plate_t50_shift_h", "plate_density_scale", "well_frac_astrocyte", "well_death_fraction"} <= set(header)


def test_plate_timing_and_efficiency_reach_the_cells():
    cond = DEFAULT_CONDITIONS["neuron-directed"]
    nominal = plate_biology(0, 0, vary=False)

    def cells(shift, efficiency):
        plate = replace(nominal, t50_shift_h=shift, efficiency=efficiency)
        bio = well_biology(cond.fractions, True, plate, seed=1, plate_index=0, well="A01", vary=False)
        return seed_field(cond, width_um=900, height_um=700, seed=1, plate=0, well="A01", field_index=1, biology=bio)

    early, late = cells(-12.0, 1.0), cells(12.0, 1.0)
    neurons = lambda c: c.fate == NEURON  # noqa: E731
    assert commitment(early, 48)[neurons(early)].mean() > commitment(late, 48)[neurons(late)].mean() + 0.2
    low, high = cells(0.0, 0.8), cells(0.0, 1.1)
    seeded = lambda c: c.parent == -1  # noqa: E731
    assert (low.fate[seeded(low)] == UNDIFFERENTIATED).mean() > (high.fate[seeded(high)] == UNDIFFERENTIATED).mean()


def test_no_cell_shows_a_fate_at_induction():
    for name in ("neuron-directed", "astrocyte-directed", "oligodendrocyte-directed", "mixed"):
        for seed in range(4):
            cells = seed_field(DEFAULT_CONDITIONS[name], width_um=800, height_um=600, seed=seed, plate=seed,
                               well="C05", field_index=1)
            assert commitment(cells, 0.0).max() == 0.0
            assert 0.0 < commitment(cells, 12.0)[cells.commits].mean() < commitment(cells, 48.0)[cells.commits].mean()


def test_condition_sets_hold_conditions_no_other_plate_had():
    for name in ("dose", "mixtures"):
        plates = [plate_conditions(name, seed=3, plate=p, n=5) for p in range(3)]
        assert all(len(p) == 5 for p in plates)
        induced = [set(k for k, c in p.items() if c.induced) for p in plates]
        assert not induced[2] & (induced[0] | induced[1])
        for p in plates:
            for c in p.values():
                assert sum(c.fractions) == pytest.approx(1.0) and min(c.fractions) >= 0
        assert plates == [plate_conditions(name, seed=3, plate=p, n=5) for p in range(3)]
    doses = plate_conditions("dose", seed=3, plate=0, n=5)
    labels = [c.label for c in doses.values()]
    assert labels[0] == "astrocyte" and labels[-1] == "neuron"  # the dose axis crosses the fate boundary
    assert plate_conditions("recipes") == DEFAULT_CONDITIONS
    with pytest.raises(UserFacingError, match="condition set"):
        plate_conditions("cocktails")


def test_tiles_export_with_mixtures_records_conditions_and_draws(tmp_path):
    export_tiles(tmp_path, plates=2, hours=(0,), tile_size=32, wells_per_condition=1, condition_set="mixtures")
    meta = json.loads((tmp_path / "tiles.json").read_text(encoding="utf-8"))
    assert meta["condition_set"] == "mixtures"
    assert {"mixture-p1-1", "mixture-p2-1", "undifferentiated"} <= set(meta["conditions"])
    for plate in ("sim-plate-1", "sim-plate-2"):
        draws = meta["biology"][plate]
        assert set(draws["plate"]) == {"plate_t50_shift_h", "plate_efficiency", "plate_density_scale",
                                       "plate_death_fraction"}
        assert len(draws["wells"]) == 5
        fr = [sum(v for k, v in w.items() if k.startswith("well_frac_")) for w in draws["wells"].values()]
        assert np.allclose(fr, 1.0, atol=1e-3)
    assert meta["biology"]["sim-plate-1"]["plate"] != meta["biology"]["sim-plate-2"]["plate"]


def test_cli_chooses_the_condition_set(tmp_path):
    import csv

    from nscmonitor.cli import main

    rc = main(["simulate", str(tmp_path / "run"), "--plate", "24", "--fields", "1", "--hours", "0", "--speed", "0",
               "--wells", "A1,A6", "--frame", "704x520", "--conditions", "dose", "--fixed-biology"])
    assert rc == 0
    with open(tmp_path / "run" / "simulation-manifest.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["condition"] for r in rows] == ["neuron-dose-0.03", "neuron-dose-30"]
    assert {r["condition_set"] for r in rows} == {"dose"} and {r["plate_t50_shift_h"] for r in rows} == {"0.0"}
