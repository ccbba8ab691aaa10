"""``nscmonitor status`` warns when a folder's newest scored images are of several channels
(no ``channel`` setting: every wavelength an instrument writes is scored into the same well
readouts), and not once the folder names its channel; ``doctor`` says which. A real daemon on
ImageXpress-style names (one file per site and wavelength), a real store, the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import cells_image, stable_seed, write_tiff
from nscmonitor.cli import main


@pytest.mark.parametrize("channel", [None, "1"])
def test_status_warns_of_channels_scored_together_until_the_folder_names_one(
        tmp_path: Path, make_runner, db_url: str, capsys: pytest.CaptureFixture[str], channel: str | None) -> None:
    watch = tmp_path / "PLATE1"
    for well in ("A01", "B02"):
        for w in (1, 2):
            write_tiff(watch / "TimePoint_1" / f"PLATE1_{well}_s1_w{w}.tif",
                       cells_image(stable_seed("channels", well, w), (64, 64)))
    kw = {"channel": channel} if channel else {}
    runner = make_runner(watch, db_url=db_url, experiment="IMX", **kw)
    runner.run(once=True)
    main(["status", "--db", db_url, "--json"])
    warnings = [w for w in json.loads(capsys.readouterr().out)["warnings"] if "channels" in w]
    if channel is None:
        assert warnings == ["experiment IMX: its newest scored images are of 2 channels (1, 2), all averaged into "
                            "the same well readouts; set the folder's channel to the label-free one the model was "
                            "trained on (from the daemon's next start the others are skipped, those scored already "
                            "taken out of the readouts)"]
    else:
        assert warnings == []


def _config(tmp_path: Path, watch_tables: str) -> Path:
    """A config file with the test's own database, models and log folders and these watch tables."""
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'database_url = "sqlite:///{(tmp_path / "nsc.db").as_posix()}"\n'
                   f'models_dir = "{(tmp_path / "models").as_posix()}"\nlog_dir = "{(tmp_path / "logs").as_posix()}"\n'
                   + watch_tables)
    return cfg


def test_doctor_says_which_channel_each_folder_scores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("all", "one"):
        (tmp_path / name).mkdir()
    cfg = _config(tmp_path, f'[[watch]]\npath = "{(tmp_path / "all").as_posix()}"\nexperiment = "all"\n'
                            f'[[watch]]\npath = "{(tmp_path / "one").as_posix()}"\nexperiment = "one"\n'
                            'channel = "phase"\n')
    assert main(["--config", str(cfg), "doctor"]) == 0
    out = capsys.readouterr().out
    line = {n: next(x for x in out.splitlines() if f"watch {n} " in x and "pixel size" not in x) for n in ("all", "one")}
    assert "every channel scored" in line["all"] and "channel phase" in line["one"]


@pytest.mark.parametrize("channel,warned", [("phase", True), ("1", False)])
def test_status_warns_when_a_channel_setting_skips_every_image(
        tmp_path: Path, make_runner, db_url: str, capsys: pytest.CaptureFixture[str], channel: str,
        warned: bool) -> None:
    """ImageXpress names give the wavelength's number: ``channel = "phase"`` matches none of
    them, every image is skipped with its reason, the daemon is healthy and the plate empty.
    ``status`` says so; the number that is in the names leaves it quiet."""
    watch = tmp_path / "PLATE1"
    for i in range(24):
        well = f"{'ABCDEFGH'[i % 8]}{i // 8 + 1:02d}"
        write_tiff(watch / "TimePoint_1" / f"PLATE1_{well}_s1_w1.tif", cells_image(stable_seed("skip", i), (64, 64)))
    runner = make_runner(watch, db_url=db_url, experiment="IMX", channel=channel)
    runner.run(once=True)
    main(["status", "--db", db_url, "--json"])
    warnings = [w for w in json.loads(capsys.readouterr().out)["warnings"] if "skipped" in w]
    if warned:
        assert warnings == ["experiment IMX: its newest 24 images were all skipped, none scored (e.g. channel 1 is "
                            "not the scored channel (phase)); check the folder's channel setting against what its "
                            "file names carry (a corrected setting scores these images from the daemon's next start)"]
    else:
        assert warnings == []


def test_status_warns_when_every_newest_image_fails_qc(tmp_path: Path, make_runner, db_url: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Blank frames (an empty channel, a lamp off): each fails QC, none gives a readout, the
    daemon is healthy; ``status`` says why the plate stays empty."""
    import numpy as np

    watch = tmp_path / "PLATE1"
    for i in range(24):
        well = f"{'ABCDEFGH'[i % 8]}{i // 8 + 1:02d}"
        write_tiff(watch / "TimePoint_1" / f"PLATE1_{well}_s1_w1.tif", np.zeros((64, 64), np.uint16))
    runner = make_runner(watch, db_url=db_url, experiment="IMX")
    runner.run(once=True)
    main(["status", "--db", db_url, "--json"])
    warnings = [w for w in json.loads(capsys.readouterr().out)["warnings"] if "QC" in w]
    assert warnings == ["experiment IMX: its newest 24 scored images all failed QC (e.g. blank frame (no signal)), "
                        "so none gives a readout; check the instrument and the folder's channel"]


def _metaxpress_plate(root: Path) -> Path:
    """ImageXpress names (the wavelength's number) over TIFFs that state the illumination's name."""
    import numpy as np
    import tifffile

    for well in ("A01", "B02"):
        for w, illum in ((1, "TL-20"), (2, "FITC")):
            p = root / "PLATE1" / "TimePoint_1" / f"PLATE1_{well}_s1_w{w}.tif"
            p.parent.mkdir(parents=True, exist_ok=True)
            desc = ("<MetaData>\n<PlaneInfo>\n"
                    f"<prop id=\"_IllumSetting_\" type=\"string\" value=\"{illum}\"/>\n</PlaneInfo>\n</MetaData>")
            img = cells_image(stable_seed("mx", well, w), (64, 64))
            tifffile.imwrite(p, img, description=desc, software="MetaSeries", metadata=None)
    return root / "PLATE1"


def test_doctor_and_run_say_which_number_a_channel_name_has(tmp_path: Path, tiny_model: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """``channel = "TL-20"`` on ImageXpress names would skip every image: the doctor fails the
    folder's channel check naming the number to set, and ``nscmonitor run`` warns at its start,
    before the first image is skipped."""
    import subprocess
    import sys

    watch = _metaxpress_plate(tmp_path)
    cfg = _config(tmp_path, f'[[watch]]\npath = "{watch.as_posix()}"\nexperiment = "IMX"\nchannel = "TL-20"\n')
    assert main(["--config", str(cfg), "doctor"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "watch IMX channels" in x)
    assert line.startswith("--") and "1 (TL-20), 2 (FITC)" in line and 'set channel = "1"' in line

    run = subprocess.run([sys.executable, "-m", "nscmonitor", "--config", str(cfg), "run", "--model", str(tiny_model),
                          "--once"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "WARNING: watch" in run.stderr and "so every image is skipped: set channel = \"1\"" in run.stderr

    cfg.write_text(cfg.read_text().replace('channel = "TL-20"', 'channel = "1"'))
    assert main(["--config", str(cfg), "doctor"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "watch IMX channels" in x)
    assert line.startswith("ok") and "scored: 1 (TL-20)" in line


@pytest.mark.parametrize("z", ["all", "projection"])
def test_status_warns_of_z_planes_scored_together_until_the_folder_scores_one(
        tmp_path: Path, make_runner, db_url: str, capsys: pytest.CaptureFixture[str], z: str) -> None:
    watch = tmp_path / "PLATE1"
    for well in ("A01", "B02"):
        img = cells_image(stable_seed("planes", well), (64, 64))
        write_tiff(watch / "TimePoint_1" / f"PLATE1_{well}_s1_w1.tif", img)
        for plane in (1, 2):
            write_tiff(watch / "TimePoint_1" / f"ZStep_{plane}" / f"PLATE1_{well}_s1_w1.tif", img // (plane + 1))
    runner = make_runner(watch, db_url=db_url, experiment="IMX", z=z)
    runner.run(once=True)
    main(["status", "--db", db_url, "--json"])
    warnings = [w for w in json.loads(capsys.readouterr().out)["warnings"] if "z planes" in w]
    if z == "all":
        assert warnings == ["experiment IMX: its newest scored images are of 3 z planes (projection, 1, 2), all "
                            "averaged into the same well readouts; set the folder's z to \"projection\" or the plane "
                            "to score (from the daemon's next start the others are skipped, those scored already "
                            "taken out of the readouts)"]
    else:
        assert warnings == []


@pytest.mark.parametrize("induction", [False, True])
def test_status_warns_when_scored_images_carry_no_time_and_so_give_no_readouts(
        tmp_path: Path, make_runner, db_url: str, capsys: pytest.CaptureFixture[str], induction: bool) -> None:
    """Images copied out of their acquisition folders (ImageXpress names, no ``TimePoint_N`` or
    acquisition folder above them): without a scan index or an induction time they are scored
    but keyed to no scan, so no readout and an empty plate. ``status`` says so; with
    ``induction_time`` the readouts come."""
    from datetime import datetime, timezone

    from nscmonitor.store.db import open_engine
    from nscmonitor.store.reads import Repo

    watch = tmp_path / "PLATE1"
    for well in ("A01", "B02"):
        write_tiff(watch / f"PLATE1_{well}_s1_w1.tif",
                   cells_image(stable_seed("untimed", well), (64, 64)))
    kw = {"induction_time": datetime(2026, 1, 1, tzinfo=timezone.utc).isoformat()} if induction else {}
    runner = make_runner(watch, db_url=db_url, experiment="IMX", **kw)
    runner.run(once=True)
    main(["status", "--db", db_url, "--json"])
    warnings = [w for w in json.loads(capsys.readouterr().out)["warnings"] if "carry no time" in w]
    engine = open_engine(db_url)
    try:
        repo = Repo(engine)
        readouts = list(repo.readouts(repo.experiment_id("IMX")))
    finally:
        engine.dispose()
    if induction:
        assert warnings == [] and len(readouts) == 2
    else:
        assert readouts == [] and warnings == [
            "experiment IMX: its newest 2 scored images carry no time (no scan index in their names or folders, and "
            "the folder sets no induction_time), so they give no well readouts; set the folder's induction_time "
            "(each image is then timed by its file)"]


def test_an_acquisition_of_one_time_point_is_its_own_scan(tmp_path: Path, make_runner, db_url: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """MetaXpress writes no ``TimePoint_N`` folder for an acquisition of one time point (the
    real Projection-Mix output): its acquisition folder, numbered in the order taken, is the
    scan, so each plate read gives its readouts and two reads stay two time points."""
    from nscmonitor.store.db import open_engine
    from nscmonitor.store.reads import Repo

    watch = tmp_path / "PLATE1"
    for day, acq in (("2026-12-01", "1334"), ("2026-12-02", "1340")):
        for well in ("A01", "B02"):
            write_tiff(watch / day / acq / f"PLATE1_{well}_s1_w1.tif",
                       cells_image(stable_seed("acq", acq, well), (64, 64)))
    runner = make_runner(watch, db_url=db_url, experiment="IMX")
    runner.run(once=True)
    main(["status", "--db", db_url, "--json"])
    assert not [w for w in json.loads(capsys.readouterr().out)["warnings"] if "carry no time" in w]
    engine = open_engine(db_url)
    try:
        repo = Repo(engine)
        readouts = sorted((r.well, r.timepoint, r.n_images) for r in repo.readouts(repo.experiment_id("IMX")))
    finally:
        engine.dispose()
    assert readouts == [("A01", 1334, 1), ("A01", 1340, 1), ("B02", 1334, 1), ("B02", 1340, 1)]
