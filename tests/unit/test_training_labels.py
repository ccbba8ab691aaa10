"""label_mode: simulator tiles labelled by their cells (tile) or by their well's fate (well)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile

from nscmonitor.training import data as D

ROWS = [  # well, condition, per-tile label
    ("A1", "neuron-directed", "astrocyte"),
    ("A1", "neuron-directed", "neuron"),
    ("B1", "mixed", "astrocyte"),
    ("C1", "custom", "oligodendrocyte"),
    ("C1", "custom", "oligodendrocyte"),
    ("C1", "custom", "undifferentiated"),
]


def _export(root, conditions=None):
    root.mkdir()
    with (root / "tiles.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "plate", "well", "field", "timepoint", "elapsed_h", "condition", "label", "split"])
        for i, (well, cond, lab) in enumerate(ROWS):
            tifffile.imwrite(root / f"t{i}.tif", np.full((8, 8), i, np.uint16))
            w.writerow([f"t{i}.tif", "p1", well, 1, i + 1, 24.0 * i, cond, lab, "train"])
    (root / "tiles.json").write_text(json.dumps({"pixel_size_um": 1.24, "tile_size": 8,
                                                 **({"conditions": conditions} if conditions else {})}))
    return root


def test_tile_mode_keeps_per_tile_labels(tmp_path):
    recs, _ = D.discover(_export(tmp_path / "d"))
    assert [r.label for r in recs] == [lab for _, _, lab in ROWS]


def test_well_mode_gives_every_tile_its_wells_fate(tmp_path):
    recs, _ = D.discover(_export(tmp_path / "d"), label_mode="well")
    # neuron-directed and mixed (0.36 neuron > 0.34 astrocyte) from the simulator's conditions;
    # an unknown condition falls back to the majority of the well's tile labels
    assert [r.label for r in recs] == ["neuron", "neuron", "neuron", "oligodendrocyte", "oligodendrocyte",
                                       "oligodendrocyte"]


def test_well_mode_prefers_the_conditions_written_in_tiles_json(tmp_path):
    conds = {"mixed": {"fractions": [0.2, 0.5, 0.1, 0.2]}}
    recs, _ = D.discover(_export(tmp_path / "d", conds), label_mode="well")
    assert recs[2].label == "astrocyte"


def test_unknown_label_mode_is_refused(tmp_path):
    with pytest.raises(D.DataError, match="label_mode"):
        D.discover(_export(tmp_path / "d"), label_mode="plate")


def test_binary_well_label_follows_the_neuron_vs_glia_shares(tmp_path):
    """A 'mixed' well (0.36 neuron vs 0.42 glia) wins 'neuron' among four classes but is
    glia-majority: in the binary scheme it is glia; a neuron-directed well stays neuron."""
    recs, _ = D.discover(_export(tmp_path / "d"), label_mode="well")
    multi = {r.well: r.label for r in D.for_scheme(recs, "multiclass")[0]}
    binary = {r.well: r.label for r in D.for_scheme(recs, "binary")[0]}
    assert multi["B1"] == "neuron" and binary["B1"] == "glia"
    assert binary["A1"] == "neuron"
