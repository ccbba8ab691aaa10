"""``nscmonitor train-forecast``: from a simulated tiles export to a forecast.onnx the daemon
loads, with the held-out wells' figures per hour printed and stored in the file."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    from nscmonitor.simulate.labelled_tiles import export_tiles

    out = tmp_path_factory.mktemp("fc") / "data"
    export_tiles(out, plates=3, tile_size=64, hours=(0.0, 24.0, 48.0), wells_per_condition=2, seed=3)
    return out


def test_train_forecast_writes_a_model_the_daemon_loads(export: Path, tmp_path: Path, capsys) -> None:
    from nscmonitor.cli import main
    from nscmonitor.scoring.forecast import load_forecast_model

    assert main(["train-forecast", "--data", str(export), "--out", str(tmp_path / "fc"), "--epochs", "20"]) == 0
    printed = capsys.readouterr().out
    model = load_forecast_model(tmp_path / "fc" / "forecast.onnx")
    meta = model.meta
    assert meta["tile_px"] == 64 and meta["normalisation"] == "plate0+well0" and meta["scheme"] == "multiclass"
    assert meta["classes"] == ["neuron", "astrocyte", "oligodendrocyte", "undifferentiated"]
    per_hour = meta["metrics"]["per_hour"]
    assert sorted(per_hour) == ["0 h", "24 h", "48 h"] and meta["metrics"]["split"] == "test"
    with (export / "tiles.csv").open() as fh:
        test_wells = {(r["plate"], r["well"]) for r in csv.DictReader(fh) if r["split"] == "test"}
    assert 0 < per_hour["48 h"]["wells"] <= len(test_wells)
    for hour, v in per_hour.items():
        lo, hi = v["ci95"]
        assert lo <= v["accuracy"] <= hi
        assert f"{hour:>7}  {v['accuracy']:.2f} [{lo:.2f}, {hi:.2f}]  (n = {v['wells']})" in printed
    seq = np.zeros((3, meta["input_width"]), np.float32)
    p = model.probs(seq)
    assert p.shape == (4,) and abs(float(p.sum()) - 1) < 1e-5


def test_an_export_with_too_few_wells_is_refused_and_one_plate_is_warned_about(export: Path, tmp_path: Path,
                                                                               capsys) -> None:
    from nscmonitor.cli import main

    with (export / "tiles.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    first = rows[0]["plate"]

    def subset(name: str, keep) -> Path:
        folder = tmp_path / name
        shutil.copytree(export, folder)
        with (folder / "tiles.csv").open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(r for r in rows if keep(r))
        return folder

    one_well = subset("one-well", lambda r: r["plate"] == first and r["well"] == rows[0]["well"])
    assert main(["train-forecast", "--data", str(one_well), "--out", str(tmp_path / "a"), "--epochs", "5"]) != 0
    assert "needs both training and validation wells" in capsys.readouterr().err
    assert not (tmp_path / "a" / "forecast.onnx").exists()
    one_plate = subset("one-plate", lambda r: r["plate"] == first)
    assert main(["train-forecast", "--data", str(one_plate), "--out", str(tmp_path / "b"), "--epochs", "5"]) == 0
    out = capsys.readouterr().out
    assert "warning: validation wells share plate(s)" in out and (tmp_path / "b" / "forecast.onnx").is_file()
