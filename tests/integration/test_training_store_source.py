"""Source (c) from the command line: images in a hand-made store (real SQLite and a real
PostgreSQL server, real writer)
joined with an end-point label CSV, split by well, trained and exported by
``nscmonitor train --labels`` / ``--from-store``."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("torch")

from nscmonitor.cli import main as cli_main  # noqa: E402
from nscmonitor.core.domain import ImageKey, QCMetrics, parse_well  # noqa: E402
from nscmonitor.labels import import_labels  # noqa: E402
from nscmonitor.core.aggregate import image_score  # noqa: E402
from nscmonitor.store.db import ensure_schema, open_engine  # noqa: E402
from nscmonitor.store.writer import Discovered, Scored, Writer  # noqa: E402
from nscmonitor.training.synthetic import render_tile  # noqa: E402

FATES = {"A01": "neuron", "A02": "neuron", "A03": "neuron", "B01": "astrocyte", "B02": "astrocyte",
         "B03": "astrocyte", "C01": "neuron"}  # C01 stays unlabelled
HOURS = (24.0, 48.0, 72.0, 96.0)
QC_FAILED = ("P1", "A01", 2, 4)  # plate, well, field, timepoint: scored but failed QC


def _qc(passed: bool) -> QCMetrics:
    return QCMetrics(10.0, 0.0, False, "uint8", 0.0, 255.0, 5.0, 200.0, passed, None if passed else "out of focus")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store_dir(request, tmp_path_factory) -> Path:
    """The hand-made store on SQLite and on a database of the real PostgreSQL server."""
    tmp = tmp_path_factory.mktemp("store")
    url = f"sqlite:///{tmp / 'nsc.db'}"
    if request.param == "postgresql":
        from sqlalchemy.engine import make_url

        from conftest import pg_admin_exec

        admin = request.getfixturevalue("pg_admin_url")
        name = f"nsct_train_{tmp.name.replace('-', '_').lower()}"[:60]
        pg_admin_exec(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
        request.addfinalizer(lambda: pg_admin_exec(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        url = make_url(admin).set(database=name).render_as_string(hide_password=False)
    (tmp / "db_url").write_text(url)
    engine = open_engine(url)
    ensure_schema(engine)
    store = Writer(engine)
    exp = store.ensure_experiment("E1")
    rng = np.random.default_rng(4)
    found = []
    for plate in ("P1", "P2"):
        for well, fate in FATES.items():
            row, col = parse_well(well)
            for t, h in enumerate(HOURS, start=1):
                for f in (1, 2):
                    path = tmp / "images" / plate / f"{well}_f{f}_t{t}.tif"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tifffile.imwrite(path, np.block([[render_tile(rng, fate, h, 32) for _ in range(2)]
                                                     for _ in range(2)]))
                    st = path.stat()
                    found.append(Discovered(str(path), path.name, st.st_size, st.st_mtime, exp, None,
                                            ImageKey(plate, well, row, col, field=f, timepoint=t, elapsed_h=h),
                                            plate, 96, h, None))
    pending = next(d for d in found if d.path.endswith("P2/A02_f1_t2.tif"))  # queued, never scored
    found.remove(pending)
    store.enqueue(found)
    claimed = store.claim(10_000, time.time())
    scored = []
    for c in claimed:
        parts = Path(c.path)
        failed = (parts.parent.name, parts.name[:3], int(parts.stem.split("_f")[1][0]), int(parts.stem[-1])) == QC_FAILED
        scored.append(Scored(c.id, f"h{c.id}", _qc(not failed), 64, 64, image_score(np.full((4, 2), 0.5)), None,
                             "v0", ("neuron", "glia"), "ort-fp32"))
    store.complete(scored)
    store.enqueue([pending])
    with open(tmp / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["experiment", "plate", "well", "label"])
        for plate in ("P1", "P2"):
            w.writerows(["E1", plate, well, fate] for well, fate in FATES.items() if well != "C01")
    (tmp / "config.toml").write_text(f'database_url = "{url}"\n'
                                     f'models_dir = "{tmp / "models"}"\nlog_dir = "{tmp / "logs"}"\n')
    return tmp


def _db(store_dir: Path) -> str:
    return (store_dir / "db_url").read_text()


def _rows(run: Path) -> list[dict]:
    with open(run / "data" / "tiles.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_train_with_a_label_csv_joins_store_images_by_well_and_exports(store_dir, tmp_path, capsys):
    run = tmp_path / "run"
    rc = cli_main(["--config", str(store_dir / "config.toml"), "train", "--labels", str(store_dir / "labels.csv"),
                   "--out", str(run), "--scheme", "binary", "--arch", "tiny", "--epochs", "3", "--tile-size", "32",
                   "--image-size", "32", "--threads", "1", "--batch-size", "16"])
    assert rc == 0
    rows = _rows(run)
    # every scored, QC-passed image of a labelled well, and nothing else
    assert len(rows) == 2 * 6 * len(HOURS) * 2 - 2  # minus the unscored and the QC-failed image
    assert {r["well"] for r in rows} == {w for w in FATES if w != "C01"}
    assert all(r["label"] == FATES[r["well"]] for r in rows)
    assert not any(r["plate"] == "E1/P1" and r["well"] == "A01" and r["field"] == "2" and r["timepoint"] == "4"
                   for r in rows)
    # split by well, and the last plate is the test set
    split_of = {}
    for r in rows:
        assert split_of.setdefault((r["plate"], r["well"]), r["split"]) == r["split"]
    assert {s for (p, _), s in split_of.items() if p == "E1/P2"} == {"test"}
    assert {"train", "val"} <= {s for (p, _), s in split_of.items() if p == "E1/P1"}
    assert (run / "model.onnx").is_file()
    out = capsys.readouterr().out
    assert "store data: 94 images of 12 labelled wells" in out
    # the file was only read: the store holds no label set afterwards
    from nscmonitor.store.labels import labels_version
    assert labels_version(open_engine(_db(store_dir))) is None


def test_from_store_uses_imported_labels_and_refuses_without(store_dir, tmp_path, capsys):
    cfg = str(store_dir / "config.toml")
    args = ["train", "--from-store", "--out", str(tmp_path / "r0"), "--arch", "tiny", "--epochs", "1", "--no-export",
            "--tile-size", "32", "--image-size", "32", "--threads", "1"]
    assert cli_main(["--config", cfg, *args]) != 0
    assert "holds no labels" in capsys.readouterr().err
    engine = open_engine(_db(store_dir))
    only_p1 = store_dir / "p1.csv"
    only_p1.write_text("experiment,plate,well,frac_neuron,frac_astrocyte\n"
                       "E1,P1,A01,0.8,0.2\nE1,P1,A02,0.7,0.3\nE1,P1,B01,0.1,0.9\nE1,P1,B02,0.2,0.8\n"
                       "E1,P1,B03,0.3,0.7\nE1,P1,A03,0.6,0.4\n")
    import_labels(engine, only_p1)
    args[3] = str(tmp_path / "r1")
    assert cli_main(["--config", cfg, *args]) == 0
    rows = _rows(tmp_path / "r1")
    assert {r["plate"] for r in rows} == {"E1/P1"}
    assert {r["well"] for r in rows if r["label"] == "astrocyte"} == {"B01", "B02", "B03"}
    assert {"train", "val", "test"} == {r["split"] for r in rows}  # one plate: wells split per label


def test_bad_label_file_is_refused_with_line_numbers(store_dir, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("experiment,plate,well,label\nE1,P1,A01,neuron\nE1,P1,Z99,neuron\nE1,P9,A01,glia\n")
    rc = cli_main(["train", "--db", _db(store_dir), "--labels", str(bad), "--out",
                   str(tmp_path / "r"), "--arch", "tiny"])
    err = capsys.readouterr().err
    assert rc != 0 and "line 3" in err and "line 4" in err and "line 2" not in err
    assert not (tmp_path / "r" / "data" / "tiles.csv").exists()


def test_a_mistyped_database_is_refused_and_not_created(tmp_path, capsys):
    missing = tmp_path / "typo.db"
    rc = cli_main(["train", "--db", f"sqlite:///{missing}", "--from-store", "--out", str(tmp_path / "r"),
                   "--arch", "tiny"])
    assert rc != 0 and "database not found" in capsys.readouterr().err
    assert not missing.exists()
    assert not (tmp_path / "r" / "data" / "tiles.csv").exists()
