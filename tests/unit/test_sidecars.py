"""The pixel size an acquisition states beside TIFFs that carry none (CellVoyager's
MeasurementDetail.mrf, Harmony's Index.idx.xml), read for ``nscmonitor doctor``'s advice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from nscmonitor.readers.decode import decode
from nscmonitor.readers.sidecars import stated_pixel_size

BTS = 'xmlns:bts="http://www.yokogawa.co.jp/BTS/BTSSchema/1.0"'


def _mrf(*channels: tuple[int, str]) -> str:
    return (f'<?xml version="1.0" encoding="utf-8"?><bts:MeasurementDetail {BTS} bts:Version="1.0">'
            + "".join(f'<bts:MeasurementChannel bts:Ch="{ch}" bts:HorizontalPixelDimension="{um}" '
                      f'bts:VerticalPixelDimension="{um}" />' for ch, um in channels)
            + "</bts:MeasurementDetail>")


def _index(*values: str, unit: str = "m") -> str:
    images = "".join(f'<Image Version="1"><id>{i}</id><ImageResolutionX Unit="{unit}">{v}</ImageResolutionX></Image>'
                     for i, v in enumerate(values))
    return ('<?xml version="1.0" encoding="utf-8"?><EvaluationInputData '
            f'xmlns="http://www.perkinelmer.com/PEHH/HarmonyV5" Version="2"><Images>{images}</Images>'
            "</EvaluationInputData>")


def test_cellvoyager_channel_of_the_image_or_the_one_all_channels_share(tmp_path: Path) -> None:
    plate = tmp_path / "plate"
    plate.mkdir()
    (plate / "MeasurementDetail.mrf").write_text(_mrf((1, "0.325"), (2, "0.65")), encoding="utf-8")
    c2 = plate / "P_D08_T0001F001L01A01Z01C02.tif"
    assert stated_pixel_size(c2, tmp_path) == (pytest.approx(0.65), plate / "MeasurementDetail.mrf")
    assert stated_pixel_size(plate / "P_D08_T0001F001L01A01Z01C01.tif", tmp_path)[0] == pytest.approx(0.325)
    assert stated_pixel_size(plate / "other.tif", tmp_path) is None  # no channel in the name, channels differ
    (plate / "MeasurementDetail.mrf").write_text(_mrf((1, "1.24"), (2, "1.24")), encoding="utf-8")
    assert stated_pixel_size(plate / "other.tif", tmp_path)[0] == pytest.approx(1.24)


def test_harmony_index_one_level_up_in_metres_and_disagreement_says_nothing(tmp_path: Path) -> None:
    images = tmp_path / "P__2026-01-01T00_00_00-Measurement 1" / "Images"
    images.mkdir(parents=True)
    image = images / "r01c01f01p01-ch1sk1fk1fl1.tiff"
    (images / "Index.idx.xml").write_text(_index("6.4958E-07", "6.4958E-07"), encoding="utf-8")
    got = stated_pixel_size(image, tmp_path)
    assert got is not None and got[0] == pytest.approx(0.64958)
    (images / "Index.idx.xml").write_text(_index("6.4958E-07", "1.2992E-06"), encoding="utf-8")
    assert stated_pixel_size(image, tmp_path) is None


def test_a_broken_sidecar_is_logged_and_one_above_the_watch_root_is_never_read(tmp_path: Path, caplog) -> None:
    root = tmp_path / "watch"
    (root / "plate").mkdir(parents=True)
    (tmp_path / "MeasurementDetail.mrf").write_text(_mrf((1, "0.325")), encoding="utf-8")  # outside the folder
    image = root / "plate" / "P_A01_T0001F001L01A01Z01C01.tif"
    assert stated_pixel_size(image, root) is None
    (root / "plate" / "MeasurementDetail.mrf").write_text("<bts:MeasurementDetail", encoding="utf-8")
    with caplog.at_level("WARNING", logger="nscmonitor.readers.sidecars"):
        assert stated_pixel_size(image, root) is None
    assert "MeasurementDetail.mrf" in caplog.text and "cannot be read" in caplog.text


def test_the_real_cv8000_measurement_states_what_its_tiffs_do_not(real_fixtures: Path) -> None:
    tif = next((real_fixtures / "CV8000").rglob("*C01.tif"))
    assert decode(tif).pixel_size_um is None
    um, side = stated_pixel_size(tif, real_fixtures / "CV8000")
    assert um == pytest.approx(0.325) and side.name == "MeasurementDetail.mrf"


def test_doctor_quotes_the_sidecar_in_its_advice(tmp_path: Path, capsys) -> None:
    from nscmonitor.cli import main as cli_main

    plate = tmp_path / "cv" / "plate"
    plate.mkdir(parents=True)
    tifffile.imwrite(plate / "P_A01_T0001F001L01A01Z01C01.tif", np.full((16, 16), 100, np.uint16))
    (plate / "MeasurementDetail.mrf").write_text(_mrf((1, "0.325")), encoding="utf-8")
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'database_url = "sqlite:///{(tmp_path / "nsc.db").as_posix()}"\n'
                   f'models_dir = "{(tmp_path / "models").as_posix()}"\nlog_dir = "{(tmp_path / "logs").as_posix()}"\n'
                   f'[[watch]]\npath = "{(tmp_path / "cv").as_posix()}"\nexperiment = "cv"\n')
    assert cli_main(["--config", str(cfg), "doctor"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "watch cv pixel size" in x)
    assert "MeasurementDetail.mrf says 0.325 um/px" in line and "set pixel_size_um = 0.325" in line
