"""Training reads the plane the daemon scored: images scored by the real daemon (real
watcher, SQLite, ONNX Runtime on a tiny model) from a 3-channel OME-TIFF stack, the scenes
of a Zeiss CZI, the positions of a Nikon ND2 and the fields of an OME-Zarr plate, then gathered from the store as
``nscmonitor train --labels`` does, give training exactly the daemon's tiles of the
configured channel, not the file's first plane."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from conftest import cells_image, settings_for, write_tiff
from nscmonitor.engines.calibration import load_tiles
from nscmonitor.schedule.retrain import store_dataset
from nscmonitor.store import models as m
from nscmonitor.store.writer import Claimed
from nscmonitor.training import data as D

SIZE = 32  # the tiny model's input; no pixel sizes in these files, so 32 source px make a tile


def _planes(n: int, seed: int) -> list[np.ndarray]:
    """Channels with different textures and ranges: each gives different tiles."""
    return [(cells_image(seed + 7 * i, (64, 80)) // (i + 1)).astype(np.uint16) for i in range(n)]


def _scored(runner) -> list[tuple[m.Image, str, str, str]]:
    with runner.store.Session() as s:
        return s.execute(select(m.Image, m.Experiment.name, m.Plate.name, m.Well.name)
                         .join(m.Well, m.Well.id == m.Image.well_id).join(m.Plate, m.Plate.id == m.Well.plate_id)
                         .join(m.Experiment, m.Experiment.id == m.Plate.experiment_id)).all()


def _daemon_tiles(runner, img: m.Image) -> np.ndarray:
    """The tiles the daemon feeds its engine for this image (its own decode, QC, Preprocess)."""
    c = Claimed(img.id, img.path, img.path, img.experiment_id, img.well_id, None, 0, None, img.channel, False)
    grid = runner.scorer.prepare(c).grid
    return grid.tiles[:, 0]


def _train_records(runner, tmp_path: Path, watch: Path, channel: str) -> tuple[list[D.TileRecord], dict]:
    """Score the watch folder, label its wells, and build the training data from the store."""
    runner.run(once=True)
    rows = _scored(runner)
    assert rows and all(img.status == "done" for img, *_ in rows), [(i.path, i.error) for i, *_ in rows]
    wells = sorted({(e, p, w) for _, e, p, w in rows})
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["experiment", "plate", "well", "label"])
        out.writerows([e, p, w, ("neuron", "astrocyte")[i % 2]] for i, (e, p, w) in enumerate(wells))
    settings = settings_for(tmp_path, watch, channel=channel, experiment=rows[0][1])
    samples = store_dataset(settings, tmp_path / "data", labels_file=labels, tile_size=SIZE)
    assert len(samples) == len(rows)
    records, info = D.read_tiles_export(tmp_path / "data")
    assert info.tile_size == SIZE
    return records, {img.path: img for img, *_ in rows}


def test_stack_channel_goes_from_the_store_to_the_training_tiles(tmp_path: Path, make_runner) -> None:
    watch = tmp_path / "mm"
    stacks = {}
    for i, well in enumerate(("A1", "A2", "B1", "B2")):
        planes = _planes(3, 10 * i)
        stacks[well] = (write_tiff(watch / "run_1" / f"run_MMStack_{well}-Site_0.ome.tif", np.stack(planes),
                                   metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "BF", "GFP"]}}), planes)
    runner = make_runner(watch, channel="BF")
    records, images = _train_records(runner, tmp_path, watch, "BF")
    assert sorted(Path(r.path) for r in records) == sorted(p for p, _ in stacks.values())
    assert {r.channel for r in records} == {"BF"}
    for r in records:
        served = _daemon_tiles(runner, images[r.path])
        assert len(served) >= 1
        np.testing.assert_array_equal(D.image_tiles(r.path, SIZE, SIZE, channel=r.channel), served)
        first_plane = D.image_tiles(r.path, SIZE, SIZE)  # what the old reader trained on
        assert first_plane.shape != served.shape or not np.array_equal(first_plane, served)
    x, y, tile_records = D.load_arrays(records, ("neuron", "astrocyte"), tile_size=SIZE, image_size=SIZE)
    np.testing.assert_array_equal(x, np.concatenate([_daemon_tiles(runner, images[r.path])
                                                     for r in records]).astype(np.float16))
    # int8 calibration from this data folder reads the same plane
    calib = load_tiles(tmp_path / "data", runner.model.engine.metadata)
    np.testing.assert_array_equal(calib.x[:, 0], np.concatenate([_daemon_tiles(runner, images[r.path])
                                                                 for r in records]))
    # the calibration set that travels with the model is cut from the same plane
    raw, _, _, _ = D.raw_tiles(records, SIZE, len(records))
    bf_values = {float(v) for _, planes in stacks.values() for v in np.unique(planes[1])}
    assert raw and all(set(np.unique(t).astype(float)) <= bf_values for t in raw)


def test_a_wrong_channel_in_the_data_is_a_clear_error(tmp_path: Path) -> None:
    stack = write_tiff(tmp_path / "s.ome.tif", np.stack(_planes(3, 1)),
                       metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "BF", "GFP"]}})
    with pytest.raises(D.DataError) as e:
        D.image_tiles(stack, SIZE, SIZE, channel="Cy5")
    assert str(stack) in str(e.value) and "'Cy5'" in str(e.value) and "GFP" in str(e.value)


def test_old_exports_without_a_channel_column_read_the_first_plane(tmp_path: Path) -> None:
    planes = _planes(2, 3)
    write_tiff(tmp_path / "img" / "a.tif", planes[0])
    (tmp_path / "tiles.csv").write_text("path,plate,well,label,split\nimg/a.tif,P1,A01,neuron,train\n")
    records, _ = D.read_tiles_export(tmp_path)
    assert records[0].channel is None
    # the data hash of a run without channels is the one earlier versions wrote (resume checks it)
    r = records[0]
    h = hashlib.sha256(b"a.tif" + f"|neuron|train|{r.well_key}|None|".encode()
                       + hashlib.sha256((tmp_path / "img" / "a.tif").read_bytes()).digest())
    assert D.data_hash(records) == "sha256:" + h.hexdigest()
    assert D.data_hash([dataclasses.replace(r, channel="2")]) != D.data_hash(records)
    np.testing.assert_array_equal(D.read_image(records[0].path), planes[0])


@pytest.mark.parametrize("value", ["abc", "-1", "0", "nan", "1e9"])
def test_a_pixel_size_in_the_export_that_is_no_pixel_size_is_refused_at_its_line(tmp_path: Path, value: str) -> None:
    write_tiff(tmp_path / "img" / "a.tif", _planes(1, 3)[0])
    (tmp_path / "tiles.csv").write_text("path,plate,well,label,split,pixel_size_um\n"
                                        "img/a.tif,P1,A01,neuron,train,2.5\n"
                                        f"img/a.tif,P1,A02,neuron,train,{value}\n")
    with pytest.raises(D.DataError) as e:
        D.read_tiles_export(tmp_path)
    assert "line 3" in str(e.value) and repr(value) in str(e.value)
    (tmp_path / "tiles.csv").write_text("path,plate,well,label,split,pixel_size_um\n"
                                        "img/a.tif,P1,A01,neuron,train,2.5\nimg/a.tif,P1,A02,neuron,train,\n")
    assert [r.pixel_size_um for r in D.read_tiles_export(tmp_path)[0]] == [2.5, None]


def test_czi_scenes_reach_the_training_loader(tmp_path: Path, make_runner) -> None:
    pytest.importorskip("pylibCZIrw")
    from test_daemon_native_formats import _write_czi

    scenes = [_planes(2, 30), _planes(2, 40), _planes(2, 50), _planes(2, 60)]
    watch = tmp_path / "zen"
    f = _write_czi(watch / "plate7.czi", scenes, ["DAPI", "TL Brightfield"], ["B3", "B3", "C4", "C5"])
    runner = make_runner(watch, experiment="zen", channel="TL Brightfield")
    records, images = _train_records(runner, tmp_path, watch, "TL Brightfield")
    assert sorted(r.path for r in records) == [f"{f}|scene={i}" for i in range(4)]
    assert D.data_hash(records).startswith("sha256:")
    x, _, _ = D.load_arrays(records, ("neuron", "astrocyte"), tile_size=SIZE, image_size=SIZE)
    np.testing.assert_array_equal(x, np.concatenate([_daemon_tiles(runner, images[r.path])
                                                     for r in records]).astype(np.float16))
    for r in records:
        scene = int(r.path.rsplit("=", 1)[1])
        np.testing.assert_array_equal(D.read_image(r.path, channel=r.channel), scenes[scene][1])


def test_ome_zarr_fields_reach_the_training_loader(tmp_path: Path, make_runner) -> None:
    pytest.importorskip("ome_zarr")
    from test_daemon_native_formats import _write_plate

    watch = tmp_path / "zarr"
    planes = _write_plate(watch / "p.zarr", {"B/3": 1, "D/11": 1}, acquisitions=1)
    runner = make_runner(watch, experiment="hcs", channel="BF")
    records, images = _train_records(runner, tmp_path, watch, "BF")
    assert len(records) == len(planes) == 2 and all(Path(r.path).is_dir() for r in records)
    x, _, _ = D.load_arrays(records, ("neuron", "astrocyte"), tile_size=SIZE, image_size=SIZE)
    np.testing.assert_array_equal(x, np.concatenate([_daemon_tiles(runner, images[r.path])
                                                     for r in records]).astype(np.float16))
    assert sorted(D.read_image(r.path, channel=r.channel).max() for r in records) == \
        sorted(v.max() for v in planes.values())


def test_the_retrain_gate_evaluates_the_scored_channel(tmp_path: Path, tiny_model: Path, caplog) -> None:
    """The gate's held-out images are read in their channel: a channel the stack lacks leaves
    that image out with the reason, instead of judging the model on the first plane."""
    from nscmonitor.schedule.retrain import Sample, evaluate_model

    names = {"axes": "CYX", "Channel": {"Name": ["DAPI", "BF", "GFP"]}}
    paths = [write_tiff(tmp_path / f"s{i}.ome.tif", np.stack(_planes(3, i)), metadata=names) for i in range(3)]
    samples = [Sample(str(p), "E", "P", f"A0{i + 1}", 1, 1, 48.0, "neuron", None, "test", ch)
               for i, (p, ch) in enumerate(zip(paths, ("BF", "2", "Cy5")))]
    result = evaluate_model(tiny_model, samples)
    assert result.n == 2
    assert any(str(paths[2]) in r.getMessage() and "'Cy5'" in r.getMessage() for r in caplog.records)


def test_training_reads_without_hashing_the_same_pixels(tmp_path: Path) -> None:
    from nscmonitor.readers.decode import decode

    stack = write_tiff(tmp_path / "s.ome.tif", np.stack(_planes(3, 5)),
                       metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "BF", "GFP"]}})
    full, bare = decode(stack, channel="GFP"), decode(stack, channel="GFP", content_hash=False)
    assert full.sha256 == hashlib.sha256(stack.read_bytes()).hexdigest() and bare.sha256 == ""
    np.testing.assert_array_equal(bare.pixels, full.pixels)
    np.testing.assert_array_equal(D.read_image(stack, channel="GFP"), full.pixels)


def test_nd2_positions_reach_the_training_loader(tmp_path: Path, make_runner) -> None:
    pytest.importorskip("nd2")
    from nd2_file import write_nd2

    frames = np.stack([np.stack(_planes(3, s)) for s in (200, 210, 220)])  # P x C x Y x X
    watch = tmp_path / "nis"
    f = write_nd2(watch / "20260101_run.nd2", frames, ["DAPI", "BF", "GFP"], ["B3", "C4", "C5"])
    runner = make_runner(watch, experiment="nis", channel="GFP")
    records, images = _train_records(runner, tmp_path, watch, "GFP")
    assert sorted(r.path for r in records) == [f"{f}|position={i}" for i in range(3)]
    x, _, _ = D.load_arrays(records, ("neuron", "astrocyte"), tile_size=SIZE, image_size=SIZE)
    np.testing.assert_array_equal(x, np.concatenate([_daemon_tiles(runner, images[r.path])
                                                     for r in records]).astype(np.float16))
    for r in records:
        np.testing.assert_array_equal(D.read_image(r.path, channel=r.channel),
                                      frames[int(r.path.rsplit("=", 1)[1]), 2])


def test_names_that_are_not_utf8_go_from_the_store_to_the_training_loader(tmp_path: Path, make_runner) -> None:
    """The store keeps such a name in its escaped form; the dataset CSV must stay text and the
    trainer must still open the original file under its real (undecodable) name."""
    import os

    watch = tmp_path / "mm"
    folder = watch / os.fsdecode(b"run\xe9_1")  # Latin-1 e-acute: not valid UTF-8
    for i, well in enumerate(("A1", "A2")):
        write_tiff(folder / f"run_MMStack_{well}-Site_0.ome.tif", np.stack(_planes(3, 20 + i)),
                   metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "BF", "GFP"]}})
    runner = make_runner(watch, channel="BF")
    records, _ = _train_records(runner, tmp_path, watch, "BF")
    assert sorted(os.fsencode(r.path) for r in records) == sorted(
        os.fsencode(folder / f"run_MMStack_{w}-Site_0.ome.tif") for w in ("A1", "A2"))
    (tmp_path / "data" / "tiles.csv").read_text(encoding="utf-8")  # plain text, the escaped form
    assert D.data_hash(records).startswith("sha256:")
    x, _, _ = D.load_arrays(records, ("neuron", "astrocyte"), tile_size=SIZE, image_size=SIZE)
    assert len(x) >= len(records)


def test_a_folder_pixel_size_goes_from_the_store_to_the_training_data(tmp_path: Path, make_runner) -> None:
    """Files without resolution tags in a folder set to 2.48 um/px: the daemon scored them at
    that pixel size, and the training data gathered from the store records it (retraining
    learns at the scale the daemon serves); a folder without the setting records none."""
    for um in (2.48, None):
        root = tmp_path / f"at-{um}"
        watch = root / "plain"
        for i, well in enumerate(("A01", "A02")):
            write_tiff(watch / f"VID1_{well[0]}{int(well[1:])}_1_02d00h00m.tif", cells_image(40 + i, (64, 80)))
        kw = {} if um is None else {"pixel_size_um": um}
        runner = make_runner(watch, db_url=f"sqlite:///{root / 'nsc.db'}", **kw)
        runner.run(once=True)
        rows = _scored(runner)
        assert len(rows) == 2 and all(img.status == "done" for img, *_ in rows)
        labels = root / "labels.csv"
        labels.write_text("experiment,plate,well,label\n" + "".join(f"{e},{p},{w},neuron\n" for _, e, p, w in rows))
        settings = settings_for(root, watch, experiment=rows[0][1], **kw)
        samples = store_dataset(settings, root / "data", labels_file=labels, tile_size=SIZE)
        assert {s.pixel_size_um for s in samples} == {um}
        assert D.discover(root / "data", "well")[1].pixel_size_um == um


def test_frames_of_two_magnifications_train_at_one_physical_scale(tmp_path: Path, make_runner) -> None:
    """One watch folder holds a frame at 1.0 um/px (stated in the file) and the same kind of
    frame at 2.0 um/px (no resolution tags; the folder's setting): the data gathered from the
    store cuts both into tiles of the same physical field, as the daemon does, for the tile
    model, for the well forecast's features and for the calibration set (one pixel size)."""
    from nscmonitor.scoring import well_sequence as WS
    from nscmonitor.scoring.forecast import tile_px_for
    from nscmonitor.scoring.preprocess import block_mean
    from nscmonitor.training.well_frames import record_features

    watch = tmp_path / "plain"
    fine = cells_image(70, (128, 160))
    coarse = block_mean(cells_image(71, (128, 160)).astype(np.float32), 2).astype(np.uint16)
    write_tiff(watch / "VID1_A1_1_02d00h00m.tif", fine, resolution=(1e4, 1e4), resolutionunit="CENTIMETER")
    write_tiff(watch / "VID1_A2_1_02d00h00m.tif", coarse)
    runner = make_runner(watch, pixel_size_um=2.0)
    runner.run(once=True)
    rows = _scored(runner)
    assert len(rows) == 2 and all(img.status == "done" for img, *_ in rows)
    labels = tmp_path / "labels.csv"
    labels.write_text("experiment,plate,well,label\n" + "".join(f"{e},{p},{w},neuron\n" for _, e, p, w in rows))
    settings = settings_for(tmp_path, watch, experiment=rows[0][1], pixel_size_um=2.0)
    store_dataset(settings, tmp_path / "data", labels_file=labels, tile_size=SIZE)
    records, info = D.read_tiles_export(tmp_path / "data")
    ref = info.pixel_size_um
    assert ref in (1.0, 2.0) and {r.pixel_size_um for r in records} == {2.0}
    own_um = {r.path: (1.0 if r.well == "A01" else 2.0) for r in records}
    per_record = [D.load_arrays([r], ("neuron",), tile_size=SIZE, image_size=SIZE,
                                model_um=D.model_pixel_um(ref, SIZE, SIZE))[0] for r in records]
    # 128 x 160 px at 1.0 um and 64 x 80 px at 2.0 um show the same field: as many tiles each
    assert len(per_record[0]) == len(per_record[1]) == (20 if ref == 1.0 else 4)
    other = next(r for r in records if own_um[r.path] != ref)
    pixels = D.read_image(other.path)
    features = record_features(other, SIZE, ref)
    np.testing.assert_array_equal(features, WS.frame_features(pixels, tile_px_for({"tile_px": SIZE, "pixel_size_um": ref},
                                                                                  own_um[other.path])))
    assert not np.array_equal(features, WS.frame_features(pixels, SIZE))  # what a fixed pixel count would give
    raw, _, _, _ = D.raw_tiles(records, SIZE, 10, source_um=ref)
    assert len(raw) == 1 and raw[0].shape == (SIZE, SIZE)
