"""The culture model: commitment timing, proliferation, identities, plate maps."""

from __future__ import annotations

import numpy as np
import pytest

from nscmonitor.core.errors import UserFacingError
from nscmonitor.simulate.culture import (
    ASTROCYTE, DEFAULT_CONDITIONS, NEURON, OLIGODENDROCYTE, UNDIFFERENTIATED, commitment, default_plate_map,
    load_condition_map, seed_field, state_at,
)


def _field(name: str, seed: int = 3):
    return seed_field(DEFAULT_CONDITIONS[name], width_um=600, height_um=450, seed=seed, plate=0, well="B03",
                      field_index=1)


def test_neuron_commitment_follows_the_spec_time_course():
    cells = _field("neuron-directed")
    neurons = cells.fate == NEURON
    mean = {h: commitment(cells, h)[neurons].mean() for h in (0, 24, 72, 144)}
    assert mean[0] < 0.08  # nearly invisible at induction
    assert 0.05 < mean[24] < 0.4  # subtle by a day
    assert mean[72] > 0.6  # clear by day 3
    assert mean[144] > 0.9  # obvious by days 5-7
    assert commitment(cells, -5)[neurons].max() == 0.0  # no fate signal before induction


def test_oligodendrocytes_commit_later_than_neurons():
    cells = _field("mixed")
    s = commitment(cells, 60)
    assert s[cells.fate == NEURON].mean() > s[cells.fate == OLIGODENDROCYTE].mean() + 0.2


def test_control_wells_never_commit_and_keep_proliferating():
    cells = _field("undifferentiated")
    assert (cells.fate == UNDIFFERENTIATED).all()
    assert commitment(cells, 200).max() == 0.0
    alive = [(~state_at(cells, h).dead).sum() for h in (0, 48, 96)]
    assert alive[0] < alive[1] < alive[2]
    induced = _field("neuron-directed")
    assert (~state_at(induced, 96).dead).sum() < alive[2]  # differentiation slows division


def test_the_same_cells_are_seen_at_successive_time_points():
    cells = _field("astrocyte-directed")
    a, b = state_at(cells, 40), state_at(cells, 42)
    common, ia, ib = np.intersect1d(a.index, b.index, return_indices=True)
    assert len(common) > 0.9 * len(a.index)
    moved = np.hypot(a.x[ia] - b.x[ib], a.y[ia] - b.y[ib])
    assert np.median(moved) < 5.0  # µm in 2 h: slight migration, not reshuffling


def test_same_seed_same_culture_other_seed_other_culture():
    a, b, c = _field("mixed", 1), _field("mixed", 1), _field("mixed", 2)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.t50, b.t50)
    assert len(a) != len(c) or not np.allclose(a.x, c.x)


def test_oligodendrocytes_are_the_rarest_fate_on_the_default_plate():
    pm = default_plate_map(96)
    totals = np.zeros(4)
    for well in ("A01", "A03", "A05", "A07", "A09", "A11"):
        totals += np.asarray(pm.condition(well).fractions)
    committed = totals[[NEURON, ASTROCYTE, OLIGODENDROCYTE]]
    assert committed.argmin() == 2
    assert len(set(pm.wells.values())) == 6 and len(pm.wells) == 96


def test_plate_map_csv_with_new_and_known_conditions(tmp_path):
    f = tmp_path / "map.csv"
    f.write_text("well,condition,neuron,astrocyte,oligodendrocyte,undifferentiated\n"
                 "A1,neuron-directed,,,,\nB02,BDNF high,8,1,0,1\n", encoding="utf-8")
    pm = load_condition_map(f, 96)
    assert pm.wells == {"A01": "neuron-directed", "B02": "BDNF high"}
    assert pm.condition("B02").fractions == pytest.approx((0.8, 0.1, 0.0, 0.1))
    assert pm.condition("B02").label == "neuron"
    f.write_text("well,condition\nA01,mystery\n", encoding="utf-8")
    with pytest.raises(UserFacingError, match="unknown condition"):
        load_condition_map(f, 96)
    f.write_text("well,condition\nQ01,mixed\n", encoding="utf-8")
    with pytest.raises(UserFacingError, match="not on a 96-well plate"):
        load_condition_map(f, 96)
