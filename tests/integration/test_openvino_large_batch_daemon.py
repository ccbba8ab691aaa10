"""The OpenVINO engine's large request through the whole daemon: frames of 64 tiles, claimed two
at a time, reach the engine in chunks of its preferred 64 and are scored as full large requests;
every image is stored once, with the probabilities the same tiles get through OpenVINO's dynamic
graph (a real watcher, real SQLite, real int8 build and OpenVINO)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import cells_image, write_tiff
from sqlalchemy import select
from test_engine_autobuild import config, engines_by_image, run_dir_with_calibration, score_backlog

from nscmonitor.cli import main
from nscmonitor.config import load_settings
from nscmonitor.daemon import build_runner
from nscmonitor.engines import autobuild
from nscmonitor.engines.metadata import read_onnx_metadata
from nscmonitor.engines.ort import int8_path_for
from nscmonitor.readers.decode import decode
from nscmonitor.registry.registry import Registry
from nscmonitor.scoring.preprocess import Preprocess
from nscmonitor.store import models as m
from nscmonitor.store.db import open_engine

pytest.importorskip("openvino", reason="OpenVINO is an optional extra")

from nscmonitor.engines.openvino import OpenVinoEngine  # noqa: E402


@pytest.mark.parametrize("streams", [1, 2])
def test_frames_of_many_tiles_are_scored_through_the_large_request_once_and_as_the_dynamic_graph(tmp_path: Path,
                                                                                                 streams: int):
    watch = tmp_path / "watch"
    watch.mkdir()
    cfg = config(tmp_path, watch, engine="openvino-int8")
    run = run_dir_with_calibration(tmp_path)
    assert main(["--config", str(cfg), "models", "register", str(run)]) == 0
    settings = load_settings(cfg, env={})
    active = Registry(settings.models_dir, open_engine(settings.database_url)).active()
    # whether the large request serves follows the build's timing of it (test_engine_autobuild);
    # a tiny model's timing on a loaded machine can go either way, so the record says it is not slower
    status = autobuild.read_status(active.path)
    speed = dict(status.openvino_speed)
    speed[f"int8_{speed['precision']}_large_tiles_per_s"] = speed[f"int8_{speed['precision']}_tiles_per_s"]
    # and so does its layout, one request of the chunk or two parallel ones of half of it
    speed[f"int8_{speed['precision']}_large_two_streams_tiles_per_s"] = speed[f"int8_{speed['precision']}_tiles_per_s"]
    speed[f"int8_{speed['precision']}_large_streams"] = streams
    autobuild.write_status(active.path, replace(status, openvino_speed=speed))
    n = 5
    paths = []
    for i in range(n):
        paths.append(watch / f"VID1_A{i + 1}_1_00d00h00m.tif")
        write_tiff(paths[-1], cells_image(i, shape=(512, 512)))
    runner = build_runner(settings, retry_base_s=0.05, poll_interval=0.1, claim_size=2)
    runner.setup()
    engine = runner.model.engine
    assert engine.name == "openvino-int8" and engine.preferred_batch == 64
    assert (engine.large_batch, engine.large_streams) == (64 // streams, streams)
    score_backlog(runner, settings.database_url, n, "the frames to be scored")
    used = engines_by_image(settings.database_url)
    assert all(v == ["openvino-int8"] for v in used.values()), used

    int8 = int8_path_for(Path(active.path))
    meta = read_onnx_metadata(int8)
    dynamic = OpenVinoEngine(int8, meta, threads=1, precision=engine.precision)  # bf16 where the build chose it
    dynamic.load()
    pre = Preprocess.from_metadata(meta)
    with open_engine(settings.database_url).connect() as c:
        stored = dict(c.execute(select(m.Image.path, m.Prediction.prob_mean)
                                .join(m.Prediction, m.Prediction.image_id == m.Image.id)).all())
    for path in paths:
        dec = decode(path, content_hash=False)
        tiles = pre.tiles(dec.pixels, factor=pre.factor(dec.pixel_size_um)).tiles
        assert len(tiles) == 64  # two frames per claim: one large request each
        want = dynamic.infer(tiles).mean(axis=0)
        got = next(v for k, v in stored.items() if Path(k).name == path.name)
        np.testing.assert_allclose(got, want, atol=1e-4)
