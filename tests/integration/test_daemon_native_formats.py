"""Native container formats through the real daemon (real watcher, SQLite, ONNX Runtime on a
tiny model): OME-TIFF stacks with channel selection, Zeiss CZI written with Zeiss's own
library (pylibCZIrw), OME-Zarr HCS plates written with ome-zarr, and the one-line reason
when a format's optional reader is not installed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from nscmonitor.store import models as m
from conftest import cells_image, write_tiff


def _images(runner) -> dict[str, tuple]:
    with runner.store.Session() as s:
        rows = s.execute(select(m.Image, m.Well, m.Plate).outerjoin(m.Well, m.Well.id == m.Image.well_id)
                         .outerjoin(m.Plate, m.Plate.id == m.Well.plate_id)).all()
    return {img.path: (img, w, p) for img, w, p in rows}


def _readouts(runner) -> set[tuple[str, str, int]]:
    with runner.store.Session() as s:
        rows = s.execute(select(m.Plate.name, m.Well.name, m.WellReadout.time_key, m.WellReadout.n_images)
                         .join(m.Well, m.Well.id == m.WellReadout.well_id)
                         .join(m.Plate, m.Plate.id == m.WellReadout.plate_id)).all()
    return {(p, w, t) for p, w, t, n in rows if n > 0}


def _planes(n: int, seed: int) -> list[np.ndarray]:
    """Channels told apart by their range, so the stored QC maximum names the scored one."""
    return [(cells_image(seed + i, (64, 80)) // (i + 1)).astype(np.uint16) for i in range(n)]


# --- OME-TIFF stacks ---------------------------------------------------------------------

def test_ome_tiff_stack_scores_the_named_channel_and_refuses_a_wrong_one(tmp_path: Path, make_runner) -> None:
    planes = _planes(3, 10)  # DAPI, BF, GFP
    watch = tmp_path / "mm"
    stack = write_tiff(watch / "run_1" / "run_MMStack_B3-Site_0.ome.tif", np.stack(planes),
                       metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "BF", "GFP"]}})
    runner = make_runner(watch, experiment="by-name", channel="bf")
    runner.run(once=True)
    img, well, _ = _images(runner)[str(stack)]
    assert img.status == "done", img.error
    assert well.name == "B03" and img.field == 1
    assert img.qc["max"] == float(planes[1].max()) != float(planes[0].max())

    wrong = tmp_path / "wrong"
    bad = write_tiff(wrong / "run_1" / "run_MMStack_C4-Site_0.ome.tif", np.stack(planes),
                     metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "BF", "GFP"]}})
    runner2 = make_runner(wrong, experiment="wrong", channel="Cy5")
    runner2.run(once=True)
    img, _, _ = _images(runner2)[str(bad)]
    assert img.status == "quarantined"
    assert "'Cy5'" in img.error and "DAPI" in img.error and "GFP" in img.error
    assert "\n" not in img.error
    assert stack.read_bytes() and bad.exists()  # the instrument's files are left as they were


def test_ome_tiff_time_stack_picks_the_channel_by_number(tmp_path: Path, make_runner) -> None:
    planes = _planes(2, 20)
    data = np.stack([np.stack(planes), np.stack(planes[::-1])])  # T x C x Y x X: each T is an image
    watch = tmp_path / "mm"
    stack = write_tiff(watch / "r" / "r_MMStack_A1-Site_2.ome.tif", data,
                       metadata={"axes": "TCYX", "Channel": {"Name": ["DAPI", "BF"]}})
    runner = make_runner(watch, channel="2")
    runner.run(once=True)
    images = _images(runner)
    for t, expected in ((0, planes[1]), (1, planes[0])):
        img, well, _ = images[f"{stack}|t={t}"]
        assert img.status == "done", img.error
        assert (well.name, img.field, img.timepoint) == ("A01", 3, t + 1)
        assert img.qc["max"] == float(expected.max())


# --- Zeiss CZI ---------------------------------------------------------------------------

def _write_czi(path: Path, scenes: list[list[np.ndarray]], channel_names: list[str],
               scene_wells: list[str] | None, pixel_um: float = 0.65) -> Path:
    """A CZI written and (for scene names) edited with Zeiss's pylibCZIrw."""
    from pylibCZIrw import czi

    path.parent.mkdir(parents=True, exist_ok=True)
    with czi.create_czi(str(path), exist_ok=True) as w:
        for s, chans in enumerate(scenes):
            for c, plane in enumerate(chans):
                w.write(plane, plane={"C": c, "T": 0, "Z": 0}, scene=s, location=(s * 1000, 0))
        w.write_metadata(document_name=path.stem, channel_names=dict(enumerate(channel_names)),
                         scale_x=pixel_um * 1e-6, scale_y=pixel_um * 1e-6)
    if scene_wells:
        scenes_xml = "".join(f'<Scene Index="{i}" Name="{w}-{i + 1}"><Shape Name="{w}"/></Scene>'
                             for i, w in enumerate(scene_wells))
        with czi.edit_czi(str(path)) as ed, ed.edit_session() as b:
            b.set_xml(b.get_xml().replace("<Channels>", f"<S><Scenes>{scenes_xml}</Scenes></S><Channels>", 1))
    return path


def test_czi_scenes_named_by_well_become_wells_and_fields(tmp_path: Path, make_runner) -> None:
    pytest.importorskip("pylibCZIrw")
    scenes = [_planes(2, 30), _planes(2, 40), _planes(2, 50)]
    watch = tmp_path / "zen"
    f = _write_czi(watch / "plate7.czi", scenes, ["DAPI", "TL Brightfield"], ["B3", "B3", "C4"])
    runner = make_runner(watch, experiment="zen", channel="TL Brightfield", induction_time="2026-01-01T00:00:00+00:00")
    runner.run(once=True)
    rows = _images(runner)
    got = {p: (img.status, w.name, img.field, img.qc["max"], img.error) for p, (img, w, _) in rows.items()}
    assert got == {
        f"{f}|scene=0": ("done", "B03", 1, float(scenes[0][1].max()), None),
        f"{f}|scene=1": ("done", "B03", 2, float(scenes[1][1].max()), None),
        f"{f}|scene=2": ("done", "C04", 1, float(scenes[2][1].max()), None),
    }
    assert {w for _, w, _ in _readouts(runner)} == {"B03", "C04"}


def test_czi_without_well_names_is_placed_by_its_name_its_scenes_fields(tmp_path: Path, tiny_model: Path) -> None:
    """Scenes that name no well are fields of the well the file's name gives; the name's field
    is divided among them (site 2 of two scenes each: fields 3 and 4), so files named by site
    never share a field. A file of one scene is one image, as it was."""
    pytest.importorskip("pylibCZIrw")
    planes, second = _planes(2, 60), _planes(2, 70)
    watch = tmp_path / "zen"
    f = _write_czi(watch / "P1_D05_s2.czi", [planes, second], ["DAPI", "BF"], None)
    one = _write_czi(watch / "P1_D06_s1.czi", [_planes(2, 80)], ["DAPI", "BF"], None)
    from nscmonitor.config import parse_settings
    from nscmonitor.daemon import build_runner

    settings = parse_settings({
        "database_url": f"sqlite:///{tmp_path / 'zen.db'}", "models_dir": str(tmp_path / "models"),
        "log_dir": str(tmp_path / "logs"),
        "custom_profiles": [{"name": "zen", "regex": r"^(?P<plate>.+?)_(?P<well>[A-P]\d{2})_s(?P<field>\d+)\.czi$"}],
        "watch": [{"path": str(watch), "experiment": "zen", "quiet_seconds": 0.0, "profile": "custom:zen",
                   "channel": "BF"}]}, env={})
    runner = build_runner(settings, model=tiny_model, retry_base_s=0.05, poll_interval=0.2)
    try:
        runner.run(once=True)
    finally:
        runner.stop_event.set()
    rows = _images(runner)
    assert sorted(rows) == sorted([f"{f}|scene=0", f"{f}|scene=1", str(one)])
    for s, (scene, field) in enumerate(((planes, 3), (second, 4))):
        img, well, plate = rows[f"{f}|scene={s}"]
        assert img.status == "done", img.error
        assert (plate.name, well.name, img.field) == ("P1", "D05", field)
        assert img.qc["max"] == float(scene[1].max())  # its own scene, channel BF
    img, well, _ = rows[str(one)]
    assert (img.status, well.name, img.field) == ("done", "D06", 1)


# --- OME-Zarr HCS plates -----------------------------------------------------------------

def _write_plate(root: Path, wells: dict[str, int], acquisitions: int, channels=("DAPI", "BF")):
    """An HCS plate written with ome-zarr: wells {"B/3": fields per acquisition}; returns
    {(well, field, acquisition): scored plane}."""
    import zarr
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

    rows = sorted({w.split("/")[0] for w in wells})
    cols = sorted({w.split("/")[1] for w in wells}, key=int)
    group = zarr.open_group(str(root), mode="w")
    write_plate_metadata(group, rows, cols, list(wells), name="HCS-7",
                         acquisitions=[{"id": a, "starttime": 1_700_000_000 + 7200 * a} for a in range(acquisitions)])
    window = {"min": 0, "max": 65535, "start": 0, "end": 4095}
    omero = {"channels": [{"label": c, "color": "FFFFFF", "window": window} for c in channels]}
    planes = {}
    seed = 100
    for wpath, n_fields in wells.items():
        r, c = wpath.split("/")
        wg = group.require_group(r).require_group(c)
        images = [{"path": str(a * n_fields + f), "acquisition": a} for a in range(acquisitions) for f in range(n_fields)]
        write_well_metadata(wg, images)
        for im in images:
            seed += 3
            chans = _planes(len(channels), seed)
            write_image(np.stack(chans)[:, None], wg.require_group(im["path"]), axes="czyx", scale_factors=[],
                        omero=omero)
            field = int(im["path"]) % n_fields + 1
            planes[(f"{r}{int(c):02d}", field, im["acquisition"] + 1)] = chans[1]
    return planes


def test_ome_zarr_plate_fields_are_placed_by_the_plate_metadata(tmp_path: Path, make_runner) -> None:
    pytest.importorskip("ome_zarr")
    watch = tmp_path / "zarr"
    plate = watch / "anything.zarr"  # the folder name says nothing: the metadata names the plate
    planes = _write_plate(plate, {"B/3": 2, "D/11": 1}, acquisitions=2)
    runner = make_runner(watch, experiment="hcs", channel="BF")
    runner.run(once=True)
    rows = _images(runner)
    assert len(rows) == len(planes) == 6
    got = {}
    for path, (img, well, p) in rows.items():
        assert img.status == "done", (path, img.error)
        assert Path(path).parent.parent.parent == plate  # one field image group per row
        assert p.name == "HCS-7" and img.profile == "ome-zarr"
        got[(well.name, img.field, img.timepoint)] = img.qc["max"]
        assert img.acquired_at is not None
    assert got == {k: float(v.max()) for k, v in planes.items()}
    assert _readouts(runner) == {("HCS-7", w, t) for w, _, t in planes}
    # nothing of the plate was changed or left behind by reading
    assert not [q for q in plate.rglob("*") if q.name.endswith((".lock", ".tmp"))]


def test_zarr_field_is_ready_only_when_quiet_and_later_fields_are_found(tmp_path: Path) -> None:
    pytest.importorskip("ome_zarr")
    from nscmonitor.intake.zarr_plates import ZarrPlates

    now = [0.0]
    wall = [1e12]  # far from the files' mtimes is not wanted: set from them below
    plate = tmp_path / "p.zarr"
    _write_plate(plate, {"B/3": 1}, acquisitions=1)
    newest = max(q.stat().st_mtime for q in plate.rglob("*") if q.is_file())
    wall[0] = newest + 1.0
    zp = ZarrPlates(10.0, clock=lambda: now[0], wall=lambda: wall[0], check_every=0.0)
    rest = zp.claim([str(plate / "zarr.json"), str(tmp_path / "other.tif")])
    assert rest == [str(tmp_path / "other.tif")]
    assert zp.ready() == [] and len(zp) == 1  # written a second ago: not yet
    now[0] = 9.0
    assert zp.ready() == []
    now[0] = 10.5
    ready = zp.ready()
    assert [Path(p) for p, _, _ in ready] == [plate / "B" / "3" / "0"]
    assert zp.key(ready[0][0]).well == "B03" and len(zp) == 0
    # a field that keeps growing restarts its quiet period
    _write_plate(plate, {"B/3": 2}, acquisitions=1)
    now[0] = 11.0
    wall[0] = max(q.stat().st_mtime for q in plate.rglob("*") if q.is_file()) + 1.0
    zp.claim([str(plate / "B" / "3" / f / "zarr.json") for f in ("0", "1")])  # as the watcher reports them
    assert zp.ready() == []
    extra = plate / "B" / "3" / "1" / "notes.bin"
    extra.write_bytes(b"x" * 10)
    now[0] = 20.0
    assert zp.ready() == []  # changed at 20: quiet again from here
    now[0] = 30.5
    assert sorted(Path(p).name for p, _, _ in zp.ready()) == ["0", "1"]  # both rewritten: queued again


# --- missing readers ---------------------------------------------------------------------

@pytest.mark.parametrize(("module", "extra"), [("nd2", "nd2"), ("pylibCZIrw", "czi"), ("zarr", "zarr")])
def test_a_format_without_its_reader_is_quarantined_naming_the_extra(tmp_path: Path, make_runner, monkeypatch,
                                                                     module: str, extra: str) -> None:
    watch = tmp_path / "w"
    if module == "zarr":
        pytest.importorskip("ome_zarr")
        _write_plate(watch / "p.zarr", {"A/1": 1}, acquisitions=1)
    else:
        watch.mkdir()
        (watch / f"run_WellA01_Seq0000.{extra}").write_bytes(b"\xda\xce\xbe\x0a" + b"\0" * 4092)
    monkeypatch.setitem(sys.modules, module, None)  # the package is not installed (an import then fails)
    runner = make_runner(watch)
    runner.run(once=True)
    rows = _images(runner)
    assert rows
    for img, _, _ in rows.values():
        assert img.status == "quarantined"
        assert f"pip install 'nscmonitor[{extra}]'" in img.error and "\n" not in img.error


# --- Nikon ND2 ---------------------------------------------------------------------------

def test_nd2_positions_named_by_well_become_wells_and_fields(tmp_path: Path, make_runner) -> None:
    nd2 = pytest.importorskip("nd2")
    from nd2_file import write_nd2

    frames = np.stack([np.stack(_planes(3, s)) for s in (200, 210, 220)])  # P x C x Y x X
    watch = tmp_path / "nis"
    f = write_nd2(watch / "20260101_run.nd2", frames, ["DAPI", "BF", "GFP"], ["B3", "WellB03", "C4"])
    with nd2.ND2File(str(f)) as check:  # the file is what the nd2 package reads as ND2
        assert dict(check.sizes) == {"P": 3, "C": 3, "Y": 64, "X": 80}
    runner = make_runner(watch, experiment="nis", channel="BF", induction_time="2026-01-01T00:00:00+00:00")
    runner.run(once=True)
    got = {p: (img.status, w.name, img.field, img.qc["max"], img.error) for p, (img, w, _) in _images(runner).items()}
    assert got == {
        f"{f}|position=0": ("done", "B03", 1, float(frames[0, 1].max()), None),
        f"{f}|position=1": ("done", "B03", 2, float(frames[1, 1].max()), None),
        f"{f}|position=2": ("done", "C04", 1, float(frames[2, 1].max()), None),
    }
    assert {w for _, w, _ in _readouts(runner)} == {"B03", "C04"}


def test_nd2_without_well_names_is_placed_by_its_name_and_a_wrong_channel_is_refused(tmp_path: Path,
                                                                                    make_runner) -> None:
    pytest.importorskip("nd2")
    from nd2_file import write_nd2

    frames = np.stack([np.stack(_planes(2, 300))])
    watch = tmp_path / "nis"
    good = write_nd2(watch / "20260101_WellD05_Seq0000.nd2", frames, ["DAPI", "BF"])
    runner = make_runner(watch, experiment="nis", channel="2")
    runner.run(once=True)
    img, well, _ = _images(runner)[str(good)]
    assert img.status == "done", img.error
    assert (img.profile, well.name, img.field) == ("nikon", "D05", 1)
    assert img.qc["max"] == float(frames[0, 1].max())
    assert img.width == 80 and img.height == 64

    other = tmp_path / "nis2"
    bad = write_nd2(other / "20260101_WellD06_Seq0000.nd2", frames, ["DAPI", "BF"])
    runner2 = make_runner(other, experiment="nis2", channel="GFP")
    runner2.run(once=True)
    img, _, _ = _images(runner2)[str(bad)]
    assert img.status == "quarantined"
    assert img.error == "channel 'GFP' is not in this ND2 file; channels present: 1=DAPI, 2=BF"


def test_a_container_still_being_written_waits_and_is_expanded_once_complete(tmp_path: Path, make_runner) -> None:
    pytest.importorskip("pylibCZIrw")
    scenes = [_planes(1, 400), _planes(1, 410)]
    full = _write_czi(tmp_path / "staging" / "p.czi", scenes, ["BF"], ["E5", "E6"]).read_bytes()
    watch = tmp_path / "zen"
    watch.mkdir()
    target = watch / "p.czi"
    target.write_bytes(full[: len(full) // 2])  # the directory a CZI writes last is not there yet
    runner = make_runner(watch, rescan_interval=0.001, induction_time="2026-01-01T00:00:00+00:00")
    runner.setup()
    runner.discover()
    assert _images(runner) == {}  # not queued, not marked known: looked at again
    target.write_bytes(full)
    runner.discover()
    runner.run(once=True)
    got = {p: (img.status, w.name) for p, (img, w, _) in _images(runner).items()}
    assert got == {f"{target}|scene=0": ("done", "E05"), f"{target}|scene=1": ("done", "E06")}


def test_a_container_that_never_opens_is_queued_after_a_few_looks_with_the_reason(tmp_path: Path, make_runner) -> None:
    pytest.importorskip("nd2")
    watch = tmp_path / "nis"
    watch.mkdir()
    broken = watch / "P1_WellB02_Seq0000.nd2"
    broken.write_bytes(b"\xda\xce\xbe\x0a" + b"\0" * 500)
    runner = make_runner(watch, rescan_interval=0.001, max_attempts=1)
    runner.setup()
    runner.discover()
    runner.discover()
    assert _images(runner) == {}
    runner.discover()  # the third look at the same size and mtime: queued as it is
    runner.run(once=True)
    (img, _, _), = _images(runner).values()
    assert img.status in ("failed", "quarantined")
    assert img.error.startswith("ND2 data cannot be read") and "\n" not in img.error
    assert broken.read_bytes().startswith(b"\xda\xce\xbe\x0a")  # left as it was


def test_a_listed_field_without_image_metadata_does_not_hold_the_daemon(tmp_path: Path, make_runner) -> None:
    pytest.importorskip("ome_zarr")
    watch = tmp_path / "zarr"
    plate = watch / "p.zarr"
    planes = _write_plate(plate, {"B/3": 2}, acquisitions=1)
    field = plate / "B" / "3" / "1"
    for meta in ("zarr.json", ".zattrs"):
        if (field / meta).exists():
            (field / meta).unlink()  # an image group the converter has not described (yet)
    runner = make_runner(watch, channel="BF")
    runner.run(once=True)  # returns: the undescribed field is not waited for forever
    rows = _images(runner)
    assert [(w.name, img.field, img.status) for img, w, _ in rows.values()] == [("B03", 1, "done")]
    assert len(planes) == 2
