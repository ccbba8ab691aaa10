"""The retraining scenarios' shared set-up: a configuration that retrains the tiny model in
seconds, end-point labels of the simulated wells, and a simulated plate scored once by a real
daemon with those labels imported (the tests that train a real candidate on simulator plates
use them)."""

from __future__ import annotations

import csv
from pathlib import Path

from sqlalchemy import select

from nscmonitor.simulate.culture import default_plate_map
from nscmonitor.store import models as m

WELLS = [f"{r}{c:02d}" for r in "ABCD" for c in (1, 3, 5, 9)]  # 4 wells each of 4 fates


def cpu_int8() -> str:
    """The CPU int8 engine a build makes here. Lifecycle tests name it as the engine so the
    int8 path is what they exercise: in auto mode a test-sized model's int8 can lose to fp32
    (call overhead dominates) and fp32 would then rightly serve, which depends on the CPU."""
    from nscmonitor.engines import autobuild

    return autobuild.plan(tensorrt_gpu=False, openvino=autobuild.has_openvino())[-1]


def retrain_config(tmp: Path, watch: Path, *, database_url: str, epochs: int, quiet_s: float = 0.2,
                   extra: str = "", engine: str = "auto") -> Path:
    cfg = tmp / "config.toml"
    cfg.write_text(f'''
engine = "{engine}"
database_url = "{database_url}"
models_dir = "{tmp / 'models'}"
log_dir = "{tmp / 'logs'}"
[[watch]]
path = "{watch}"
experiment = "E2E"
profile = "incucyte"
quiet_seconds = {quiet_s}
rescan_interval = 1.0
[retrain]
schedule = "interval:1h"
threads = 1
epochs = {epochs}
[retrain.train]
arch = "tiny"
image_size = 64
tile_size = 64
batch_size = 64
lr = 0.003
min_train_h = 48.0
seed = 1
{extra}
''')
    return cfg


def labels_csv(tmp: Path, engine) -> Path:
    """End-point labels of the simulated wells, under the plate name the store knows."""
    with engine.connect() as c:
        plate = c.scalar(select(m.Plate.name))
    pm = default_plate_map(96)
    labels = tmp / "labels.csv"
    with labels.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["experiment", "plate", "well", "label"])
        w.writerows(["E2E", plate, well, pm.condition(well).label] for well in WELLS)
    return labels


def scored_labelled_plate(settings, engine, scope, tmp: Path) -> None:  # noqa: ANN001 (Settings, engine, Microscope)
    """Write the microscope's frames into ``tmp/plate`` (the watched folder of
    ``retrain_config``), score them once with a real daemon and import the wells' end-point
    labels."""
    from nscmonitor.daemon import build_runner
    from nscmonitor.labels import import_labels
    from nscmonitor.simulate.microscope import tiff_bytes

    for f in scope.frames():
        p = tmp / "plate" / f.relpath
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(tiff_bytes(f.image, scope.camera.px_um))
    runner = build_runner(settings, retry_base_s=0.1, poll_interval=0.2)
    runner.run(once=True)
    runner.store.engine.dispose()
    import_labels(engine, labels_csv(tmp, engine))
