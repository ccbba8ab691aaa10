"""A store scored by a registered tiny model that carries a given call rule in its metadata,
for the tests that check the report and the dashboard call wells with the model's rule."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from conftest import cells_image, settings_for, stable_seed, write_tiff

#: the tiny model reads these frames as astrocyte at P 0.6-0.7: called under the default
#: rule (0.6 over 2 points), never under this one
STRICT = {"threshold": 0.9, "min_points": 2, "chosen_on": "validation"}
WELLS = ("A1", "A2", "B1")


def build_store(root: Path, call_rule: dict | None, *, registered: bool = True) -> tuple[str, str]:
    """(database URL, model version): a registered tiny model carrying ``call_rule`` (None: no
    rule) has scored three wells at three time points; with ``registered`` False the daemon
    serves the model file itself (``nscmonitor run --model``)."""
    from nscmonitor.daemon import build_runner
    from nscmonitor.engines.metadata import ModelMetadata, write_onnx_metadata
    from nscmonitor.engines.tiny import build_tiny_classifier
    from nscmonitor.registry.registry import Registry
    from nscmonitor.store.db import ensure_schema, open_engine

    run = root / "run"
    meta = build_tiny_classifier(run / "model.onnx", input_size=32)
    if call_rule is not None:
        proto = onnx.load(str(run / "model.onnx"))
        d = json.loads(meta.to_json())
        write_onnx_metadata(proto, ModelMetadata.from_dict({**d, "extra": {**d["extra"], "call_rule": call_rule}}))
        onnx.save(proto, str(run / "model.onnx"))
    watch = root / "watch"
    for well in WELLS:
        for hours in (24, 48, 72):
            write_tiff(watch / f"VID3_{well}_1_{hours // 24:02d}d{hours % 24:02d}h00m.tif",
                       cells_image(stable_seed(well, hours), (96, 128)))
    settings = settings_for(root, watch)
    engine = open_engine(settings.database_url)
    ensure_schema(engine)
    if registered:
        version = Registry(settings.models_dir, engine).register(run).version
    else:
        from nscmonitor.scoring.serving import file_version

        version = file_version(run / "model.onnx")
    engine.dispose()
    runner = build_runner(settings, retry_base_s=0.05, poll_interval=0.2,
                          **({} if registered else {"model": run / "model.onnx"}))
    try:
        runner.run(once=True)
    finally:
        runner.stop_event.set()
    return settings.database_url, version
