"""Data sources, scheme mapping, splits by well and the data hash."""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest
import tifffile

from nscmonitor.training import data as D
from nscmonitor.training import splits as S
from nscmonitor.training.synthetic import write_synthetic_tiles


def _records(plates: int, wells: int, tiles_per_well: int = 3) -> list[D.TileRecord]:
    labels = ["neuron", "astrocyte", "oligodendrocyte", "undifferentiated"]
    return [D.TileRecord(path=f"p{p}_w{w}_{t}.tif", label=labels[w % 4], plate=f"P{p}", well=f"W{w}",
                         elapsed_h=12.0 * t)
            for p in range(plates) for w in range(wells) for t in range(tiles_per_well)]


@pytest.mark.parametrize("plates", [1, 2, 4])
def test_splits_never_share_a_well(plates):
    out = S.assign_splits(_records(plates, 24), seed=3)
    where = {}
    for r in out:
        where.setdefault(r.well_key, set()).add(r.split)
    assert all(len(s) == 1 for s in where.values())
    assert {r.split for r in out} == {"train", "val", "test"}


def test_three_or_more_plates_are_split_by_plate():
    out = S.assign_splits(_records(5, 8), seed=1)
    per_plate = {}
    for r in out:
        per_plate.setdefault(r.plate, set()).add(r.split)
    assert all(len(s) == 1 for s in per_plate.values())


def test_given_split_column_with_a_leaking_well_is_refused():
    recs = [D.TileRecord("a.tif", "neuron", plate="P1", well="A01", split="train"),
            D.TileRecord("b.tif", "neuron", plate="P1", well="A01", split="test")]
    with pytest.raises(D.DataError, match="more than one split"):
        S.assign_splits(recs)


def test_store_records_inherit_the_end_point_label_of_their_well(tmp_path):
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text(
        "experiment,plate,well,label,frac_neuron,frac_astrocyte\n"
        "exp1,P1,A1,neuron,,\n"
        "exp1,P1,B02,,0.2,0.7\n")
    labels = D.read_label_csv(labels_csv)
    images = [("/img/a_0h.tif", "exp1", "P1", "A01", 0.0),
              ("/img/a_48h.tif", "exp1", "P1", "A01", 48.0),
              ("/img/b_24h.tif", "exp1", "P1", "B2", 24.0),
              ("/img/c_24h.tif", "exp1", "P1", "C03", 24.0),
              ("/img/a_other.tif", "exp2", "P1", "A01", 5.0)]
    recs = D.join_store_records(images, labels)
    assert [(r.path, r.label, r.well, r.elapsed_h) for r in recs] == [
        ("/img/a_0h.tif", "neuron", "A01", 0.0),
        ("/img/a_48h.tif", "neuron", "A01", 48.0),
        ("/img/b_24h.tif", "astrocyte", "B02", 24.0)]
    assert recs[2].fractions == {"neuron": 0.2, "astrocyte": 0.7}


def test_binary_scheme_is_neuron_vs_glia_without_undifferentiated():
    recs = _records(1, 4, 1)
    kept, notes = D.for_scheme(recs, "binary")
    assert [r.label for r in kept] == ["neuron", "glia", "glia"]
    assert notes and "undifferentiated" in notes[0]
    kept, notes = D.for_scheme(recs, "multiclass")
    assert len(kept) == 4 and not notes


def test_data_hash_follows_content_labels_and_splits(tmp_path):
    root = write_synthetic_tiles(tmp_path / "d", plates=1, wells_per_class=1, timepoints=(48,), fields=1,
                                 tile_size=16)
    recs, _ = D.read_tiles_export(root)
    h = D.data_hash(recs)
    assert D.data_hash(list(reversed(recs))) == h
    relabelled = [recs[0].__class__(**{**recs[0].__dict__, "label": "astrocyte"}), *recs[1:]]
    assert D.data_hash(relabelled) != h
    tifffile.imwrite(recs[1].path, np.zeros((16, 16), np.uint8))
    assert D.data_hash(recs) != h


def test_tiles_export_reads_into_daemon_scaled_tiles(tmp_path):
    root = write_synthetic_tiles(tmp_path / "d", plates=1, wells_per_class=1, timepoints=(0, 72), fields=1,
                                 tile_size=32, pixel_size_um=0.62)
    recs, info = D.read_tiles_export(root)
    assert info.pixel_size_um == 0.62 and info.tile_size == 32 and len(recs) == 8
    with (root / "tiles.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 8
    x, y, tr = D.load_arrays(recs, D.MULTICLASS, tile_size=32, image_size=16)
    assert x.shape == (8, 16, 16) and len(tr) == 8
    assert sorted(set(y.tolist())) == [0, 1, 2, 3]
    assert -0.5 <= x.min() and x.max() <= 1.5 and 0.5 < x.max()


def test_image_folder_tree_and_frame_tiling(tmp_path):
    for cls in ("neuron", "glia"):
        (tmp_path / cls).mkdir()
        tifffile.imwrite(tmp_path / cls / "f1.tif", np.random.default_rng(0).integers(0, 4000, (70, 100), np.uint16))
    recs, info = D.read_image_folder(tmp_path)
    assert info.source == "folder" and {r.label for r in recs} == {"neuron", "glia"}
    x, y, _ = D.load_arrays(recs, ("neuron", "glia"), tile_size=32, image_size=32)
    assert x.shape == (2 * 2 * 3, 32, 32)
    assert (y == 0).sum() == 6


def test_data_without_a_val_split_gets_val_wells_from_train():
    recs = [D.TileRecord(f"{w}_{t}.tif", "neuron" if w % 2 else "astrocyte", plate="P1", well=f"W{w}",
                         split="test" if w >= 8 else "train") for w in range(10) for t in range(2)]
    out = S.assign_splits(recs, val_frac=0.25)
    assert {r.split for r in out} == {"train", "val", "test"}
    assert {r.well for r in out if r.split == "test"} == {"W8", "W9"}
    S.check_splits(out)


def _plates_of(out, split):
    return {r.plate for r in out if r.split == split}


@pytest.mark.parametrize("plates", [2, 3, 4, 6])
def test_validation_never_shares_a_plate_with_training(plates):
    for seed in range(4):
        out = S.assign_splits(_records(plates, 12), seed=seed)
        assert _plates_of(out, "val") and _plates_of(out, "train")
        assert not _plates_of(out, "val") & _plates_of(out, "train")
        assert not _plates_of(out, "test") & _plates_of(out, "train")
        assert S.split_summary({s: [r for r in out if r.split == s] for s in D.SPLITS})["val_held_out_plate"]


def test_a_given_val_on_a_training_plate_is_redrawn_as_a_whole_plate(tmp_path):
    # val wells on a training plate (the simulator's export does so on every plate but the test one)
    recs = [dataclasses.replace(r, split=("train", "val", "test")[int(r.well[1:]) % 3] if r.plate == "P0" else
                                ("train", "train", "test")[int(r.well[1:]) % 3]) for r in _records(2, 12)]
    given = {r.path: r.split for r in recs}
    out = S.assign_splits(recs, seed=1)
    assert _plates_of(out, "val") == {"P0"} and _plates_of(out, "train") == {"P1"}
    assert {r.path for r in out if r.split == "test"} == {p for p, s in given.items() if s == "test"}
    # held-out plates already (three plates): left as given
    three = D.read_tiles_export(write_synthetic_tiles(tmp_path / "d", plates=3, wells_per_class=2,
                                                      timepoints=(0,), fields=1, tile_size=16))[0]
    assert S.assign_splits(three, seed=1) == three


def test_one_plate_falls_back_to_val_wells_with_a_warning():
    out = S.assign_splits(_records(1, 24), seed=0)
    summary = S.split_summary({s: [r for r in out if r.split == s] for s in D.SPLITS})
    assert not summary["val_held_out_plate"]
    assert "share plate(s) P0 with training" in summary["warning"]
    assert {r.split for r in out} == {"train", "val", "test"}
