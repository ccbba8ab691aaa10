"""Two or more daemons meeting the same new experiment, plate and wells at the same moment, on
one real PostgreSQL database: exactly one row each, no error, no image lost. Each writer has its
own engine (its own server connections), so the inserts really race on the server."""

from __future__ import annotations

import random
import threading

import pytest
from sqlalchemy import text

from nscmonitor.core.domain import ImageKey
from nscmonitor.store.db import ensure_schema, open_engine
from nscmonitor.store.writer import Discovered, Writer

WELLS = [f"{r}{c:02d}" for r in "ABCD" for c in range(1, 7)]


def _files(worker: int, exp: int, plates: list[str]) -> list[Discovered]:
    """This worker's own files (paths differ), on the same plates and wells as everyone's, in an
    order of its own, so two workers meet the wells in different orders."""
    out = [Discovered(f"/data/w{worker}/{p}_{w}_1.tif", f"{p}_{w}_1.tif", 10, 1.0, exp, None,
                      ImageKey(p, w, ord(w[0]) - 65, int(w[1:]) - 1, field=worker, timepoint=1), p, 96, None, None,
                      condition=f"cond-{w}")
           for p in plates for w in WELLS]
    random.Random(worker).shuffle(out)
    return out


def _count(engine, table: str) -> int:
    with engine.connect() as c:
        return c.execute(text(f"SELECT count(*) FROM {table}")).scalar()


@pytest.mark.parametrize("workers", [6])
def test_daemons_creating_the_same_experiment_plate_and_wells_at_once(pg_url: str, workers: int) -> None:
    ensure_schema(open_engine(pg_url))
    plates = ["P1", "P2"]
    start = threading.Barrier(workers)
    errors: list[BaseException] = []
    queued: list[int] = []
    lock = threading.Lock()

    def daemon(i: int) -> None:
        try:
            w = Writer(open_engine(pg_url))
            start.wait(timeout=30)
            exp = w.ensure_experiment("shared-experiment", watch_path=f"/data/w{i}")
            files = _files(i, exp, plates)
            new = sum(w.enqueue(files[k:k + 8])[0] for k in range(0, len(files), 8))
            with lock:
                queued.append(new)
            w.engine.dispose()
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=daemon, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    engine = open_engine(pg_url)
    assert _count(engine, "experiments") == 1
    assert _count(engine, "plates") == len(plates)
    assert _count(engine, "wells") == len(plates) * len(WELLS)
    assert sorted(queued) == [len(plates) * len(WELLS)] * workers
    assert _count(engine, "images") == workers * len(plates) * len(WELLS)
    with engine.connect() as c:
        per_well = c.execute(text("SELECT w.name, w.condition, count(i.id) FROM wells w JOIN images i "
                                  "ON i.well_id = w.id GROUP BY w.id, w.name, w.condition")).all()
    assert len(per_well) == len(plates) * len(WELLS)
    assert all(n == workers and cond == f"cond-{name}" for name, cond, n in per_well)
    engine.dispose()


def test_an_existing_well_keeps_its_row_and_takes_the_plate_maps_new_condition(db_url: str) -> None:
    engine = open_engine(db_url)
    ensure_schema(engine)
    first, second = Writer(engine), Writer(engine)  # two daemons' caches, one after the other
    exp = first.ensure_experiment("E")
    assert second.ensure_experiment("E", watch_path="/elsewhere") == exp
    key = ImageKey("P", "B03", 1, 2, field=1, timepoint=1)
    first.enqueue([Discovered("/a/1.tif", "1.tif", 1, 1.0, exp, None, key, "P", 96, None, None, condition="old")])
    second.enqueue([Discovered("/a/2.tif", "2.tif", 1, 1.0, exp, None, key, "P", 96, None, None, condition="new")])
    with engine.connect() as c:
        wells = c.execute(text("SELECT id, condition FROM wells")).all()
        image_wells = {r[0] for r in c.execute(text("SELECT well_id FROM images"))}
        watch = c.execute(text("SELECT watch_path FROM experiments")).scalar()
    assert [w.condition for w in wells] == ["new"] and image_wells == {wells[0].id}
    assert watch == "/elsewhere"
