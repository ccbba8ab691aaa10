"""Generated inputs (hypothesis): file names of arbitrary bytes, lengths and unicode through
the parser and the queue; fuzzed TIFF tags and headers through decode and the daemon's
runner. Every input ends scored, quarantined or skipped with a reason: never an exception
out of the pipeline, never a stuck queue. The claim-time attempt cap is checked here too."""

from __future__ import annotations

import itertools
import os
import tempfile
import tracemalloc
import zlib
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import cells_image, write_tiff
from daemonproc import Daemon, count, query, raw_tiff
from nscmonitor.intake.filenames import parse_path
from nscmonitor.core.names import MARK, from_db, shown, to_db
from nscmonitor.readers.decode import DecodeError, Decoded, decode

FAST = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SLOW = settings(max_examples=3, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

#: one path component as the kernel allows it: any bytes but '/' and NUL, at most 255
NAME_BYTES = st.binary(min_size=1, max_size=255).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b".."))
#: text names as a user types them; lone surrogates are not text (undecodable bytes are NAME_BYTES' job)
NAME_TEXT = st.text(st.characters(exclude_characters="/\0", exclude_categories=("Cs",)), min_size=1, max_size=60).filter(
    lambda s: s not in (".", "..") and len(os.fsencode(s)) <= 255)
INSTRUMENT = st.tuples(st.sampled_from(["A", "B", "H", "P"]), st.integers(1, 24), st.integers(1, 9)).map(
    lambda t: f"VID1_{t[0]}{t[1]}_{t[2]}_00d04h00m".encode())
NAMES = st.one_of(NAME_BYTES, NAME_TEXT.map(os.fsencode),
                  st.tuples(INSTRUMENT, NAME_BYTES.map(lambda b: b[:200]), st.sampled_from([b".tif", b".TIF", b""]))
                  .map(lambda t: t[0] + t[1] + t[2]).filter(lambda b: len(b) <= 255 and b"/" not in b))


@FAST
@given(NAMES)
def test_any_name_round_trips_through_the_stored_form_and_is_shown_escaped(name: bytes) -> None:
    path = os.fsdecode(b"/data/plate 1/" + name)
    stored = to_db(path)
    stored.encode("utf-8")  # always storable
    assert from_db(stored) == path and os.fsencode(from_db(stored)) == b"/data/plate 1/" + name
    assert stored == path or stored.startswith(MARK)
    text = shown(path)
    text.encode("utf-8")
    assert not any(ord(c) < 32 or ord(c) == 127 for c in text)


@FAST
@given(NAMES, st.sampled_from(["auto", "incucyte", "imagexpress", "operetta"]))
def test_the_parser_answers_every_name(name: bytes, profile: str) -> None:
    rel = os.fsdecode(b"TimePoint_1/" + name)
    try:
        res = parse_path(rel, profile, plate_format=96)
    except ValueError:
        return  # a clear refusal (e.g. sequential well numbers without a plate format)
    assert res.kind in ("image", "ignore", "sidecar", "error")
    assert res.kind != "error" or res.reason


_ids = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from nscmonitor.store.db import ensure_schema, open_engine
    from nscmonitor.store.writer import Writer

    engine = open_engine(f"sqlite:///{tmp_path_factory.mktemp('names') / 'nsc.db'}")
    ensure_schema(engine)
    s = Writer(engine)
    return s, s.ensure_experiment("names", watch_path="/data")


@FAST
@given(name=NAMES)
def test_any_name_enters_the_queue_and_comes_back_byte_for_byte(store, name: bytes) -> None:
    from nscmonitor.store.writer import Discovered

    s, exp = store
    rel_b = b"%d/" % next(_ids) + name
    path = os.fsdecode(b"/data/" + rel_b)
    rel = os.fsdecode(rel_b)
    res = parse_path(rel, "incucyte")
    key = res.key if res.kind == "image" else None
    error = None if key is not None else (res.reason or "not an image name")
    now = datetime.now(timezone.utc)
    new, _ = s.enqueue([Discovered(path=path, relpath=rel, size=1, mtime=1.0, experiment_id=exp, profile=res.profile,
                                   key=key, plate=key.plate if key else None, plate_format=96, elapsed_h=None,
                                   acquired_at=now, error=error)])
    assert new == 1
    assert s.known_files()[path] == (1, 1.0)
    if key is not None:
        claimed = s.claim(10_000, now_ts=1e12)
        assert path in {c.path for c in claimed}


@pytest.mark.slow
@SLOW
@given(st.lists(NAMES, min_size=5, max_size=20, unique_by=lambda b: b.lower()))
def test_a_real_daemon_records_every_generated_name(tiny_model: Path, names: list[bytes]) -> None:
    with tempfile.TemporaryDirectory(prefix="names-") as tmp:
        _daemon_records_every_name(Path(tmp), tiny_model, names)


def _daemon_records_every_name(root: Path, tiny_model: Path, names: list[bytes]) -> None:
    watch = root / "watch"
    watch.mkdir()
    frame = write_tiff(root / "frame.tif", cells_image(1)).read_bytes()
    written = []
    for n in names:
        p = os.path.join(os.fsencode(watch), n)
        with open(p, "wb") as fh:
            fh.write(frame)
        written.append(os.fsdecode(p))
    db = root / "nsc.db"
    Daemon(watch, db, tiny_model, once=True).run_once(timeout=120)
    stored = {from_db(p): s for p, s in query(db, "select path, status from images")}
    for p in written:
        rel = os.path.relpath(p, watch)
        if parse_path(rel, "auto").kind in ("ignore", "sidecar"):
            continue  # junk and sidecar files are not queued (temp files, thumbnails)
        assert p in stored, f"{shown(p)} was not recorded"
    assert set(stored.values()) <= {"done", "quarantined", "skipped"}


# --- fuzzed TIFFs -------------------------------------------------------------------
ZEROS = zlib.compress(bytes(256 * 256 * 2))
TIFFS = st.fixed_dictionaries({
    "width": st.one_of(st.integers(0, 300), st.integers(0, (1 << 32) - 1)),
    "height": st.one_of(st.integers(0, 300), st.integers(0, (1 << 32) - 1)),
    "bits": st.sampled_from([0, 1, 2, 4, 8, 12, 16, 24, 32, 64, 128, 65535]),
    "compression": st.sampled_from([0, 1, 5, 7, 8, 32773, 34925, 50000, 65535]),
    "sample_format": st.sampled_from([0, 1, 2, 3, 4, 5, 6]),
    "samples": st.sampled_from([0, 1, 2, 3, 4, 255]),
    "pages": st.integers(1, 40),
    "resolution": st.one_of(st.none(), st.tuples(st.integers(0, (1 << 32) - 1), st.integers(0, (1 << 32) - 1))),
    "resolution_unit": st.integers(0, 5),
    "data": st.one_of(st.binary(max_size=2048), st.just(ZEROS), st.just(bytes(256 * 256 * 2))),
    "strip_offset": st.one_of(st.none(), st.integers(0, (1 << 32) - 1)),
    "strip_bytes": st.one_of(st.none(), st.integers(0, (1 << 32) - 1)),
    "sparse_size": st.sampled_from([0, 0, 0, 1 << 20, 64 << 20]),
})


@FAST
@given(TIFFS)
def test_fuzzed_tiff_headers_decode_or_are_refused_with_a_reason_in_bounded_memory(tmp_path: Path, spec: dict) -> None:
    p = raw_tiff(tmp_path / "fuzz.tif", **spec)
    tracemalloc.start()
    try:
        try:
            out = decode(p, max_pixels=1_000_000)
            assert isinstance(out, Decoded) and out.pixels.ndim == 2
        except DecodeError as exc:
            assert exc.reason and "\n" not in exc.reason
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        p.unlink()
    assert peak < 128 << 20, f"decode allocated {peak / 2**20:.0f} MiB for {spec}"


# --- fuzzed pixel-size metadata: what other software writes in the description ---------------
VALUES = st.one_of(st.text(max_size=12), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.sampled_from(["1.24", "0", "-3", "1e308", "1e-300", "nan", "inf", "", "0x10", "1,5"]))
UNITS = st.one_of(st.text(max_size=6), st.sampled_from(["um", "\u00b5m", "nm", "m", "pixel", "inch", "Å", "", "micron"]))


def _description(kind: str, value: str, unit: str, state: str) -> tuple[str, dict]:
    esc = value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    uesc = unit.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    if kind == "metaseries":
        return ("<MetaData>\n<PlaneInfo>\n"
                f'<prop id="spatial-calibration-state" type="bool" value="{state}"/>\n'
                f'<prop id="spatial-calibration-x" type="float" value="{esc}"/>\n'
                f'<prop id="spatial-calibration-units" type="string" value="{uesc}"/>\n</PlaneInfo>\n</MetaData>',
                {"software": "MetaSeries"})
    if kind == "imagej":
        return f"ImageJ=1.54f\nimages=1\nunit={unit.replace(chr(10), ' ')}\n", {"resolution": (3, 7)}
    return ('<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
            f'<Image ID="Image:0"><Pixels ID="Pixels:0" PhysicalSizeX="{esc}" PhysicalSizeXUnit="{uesc}" '
            'DimensionOrder="XYCZT" Type="uint16" SizeX="16" SizeY="16" SizeC="1" SizeZ="1" SizeT="1"/></Image></OME>', {})


@FAST
@given(st.sampled_from(["metaseries", "imagej", "ome"]), VALUES, UNITS, st.sampled_from(["on", "off", "1", "x"]))
def test_fuzzed_pixel_size_metadata_never_stops_a_decode(tmp_path: Path, kind: str, value: str, unit: str,
                                                         state: str) -> None:
    """Whatever the acquisition software's description says about the pixel size, the frame
    decodes, and the pixel size is either None or a believable one."""
    import math

    import numpy as np
    import tifffile

    from nscmonitor.readers.decode import PIXEL_SIZE_RANGE_UM

    text, extra = _description(kind, value, unit, state)
    p = tmp_path / "meta.tif"
    try:
        tifffile.imwrite(p, np.full((16, 16), 5, np.uint16), description=text, metadata=None, **extra)
    except (ValueError, UnicodeEncodeError):
        return  # tifffile will not write this description (not ASCII): no file to decode
    out = decode(p)
    assert int(out.pixels[0, 0]) == 5
    um = out.pixel_size_um
    assert um is None or (math.isfinite(um) and PIXEL_SIZE_RANGE_UM[0] <= um <= PIXEL_SIZE_RANGE_UM[1])


@SLOW
@given(st.lists(TIFFS, min_size=8, max_size=16))
def test_the_runner_settles_every_fuzzed_tiff_and_keeps_scoring(make_runner, specs: list[dict]) -> None:
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        _runner_settles(Path(tmp), make_runner, specs)


def _runner_settles(watch: Path, make_runner, specs: list[dict]) -> None:
    for i, spec in enumerate(specs):
        raw_tiff(watch / f"VID1_A{i % 12 + 1}_{i // 12 + 1}_00d00h00m.tif", **spec)
    good = write_tiff(watch / "VID1_H12_9_00d00h00m.tif", cells_image(3))
    runner = make_runner(watch, profile="incucyte", max_attempts=2, retry_base_s=0.01)
    runner.run(once=True)
    db = Path(runner.settings.database_url.removeprefix("sqlite:///"))
    mine = f"path like '{watch}/%'"  # the fixture's database is shared by the examples
    assert count(db, mine) == len(specs) + 1
    assert count(db, f"{mine} and status in ('pending', 'processing', 'failed')") == 0
    assert count(db, f"{mine} and status = 'quarantined' and (error is null or error = '')") == 0
    assert query(db, "select status from images where path = ?", (str(good),))[0][0] == "done"


def test_an_image_the_daemon_dies_on_every_time_is_quarantined_at_claim(tmp_path: Path) -> None:
    """Attempts count claims: after each kill, start-up puts the row back to pending
    (requeue_stale) with its attempt counted; the claim after the last allowed one
    quarantines it with the reason instead of handing it out again."""
    from nscmonitor.store.db import ensure_schema, open_engine
    from nscmonitor.store.writer import Discovered, Writer

    engine = open_engine(f"sqlite:///{tmp_path / 'nsc.db'}")
    ensure_schema(engine)
    s = Writer(engine)
    exp = s.ensure_experiment("e")
    res = parse_path("VID1_A1_1_00d00h00m.tif", "incucyte")
    s.enqueue([Discovered(path="/data/VID1_A1_1_00d00h00m.tif", relpath="VID1_A1_1_00d00h00m.tif", size=1, mtime=1.0,
                          experiment_id=exp, profile="incucyte", key=res.key, plate="P", plate_format=96,
                          elapsed_h=0.0, acquired_at=None)])
    for attempt in range(1, 4):
        claimed = s.claim(4, now_ts=1e12, max_attempts=3)
        assert [c.attempts for c in claimed] == [attempt]
        assert s.requeue_stale() == 1  # the daemon was killed mid-image and started again
    assert s.claim(4, now_ts=1e12, max_attempts=3) == []
    with engine.connect() as c:
        status, error = c.exec_driver_sql("select status, error from images").one()
    assert status == "quarantined" and "gave up after 3 attempts" in error and "daemon stopped during it" in error


@FAST
@given(st.one_of(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
                 st.datetimes().map(lambda d: d.strftime("%Y:%m:%d %H:%M:%S")),
                 st.datetimes().map(lambda d: d.strftime("%Y%m%d %H:%M:%S.%f"))))
def test_fuzzed_datetime_tags_never_stop_a_decode(tmp_path: Path, value: str) -> None:
    """Whatever the DateTime tag says, the frame decodes, and an acquisition time read is a
    believable one (after 2000, not in the future)."""
    from datetime import datetime, timedelta, timezone

    import numpy as np
    import tifffile

    from nscmonitor.readers.decode import EARLIEST_ACQUISITION

    p = tmp_path / "dt.tif"
    tifffile.imwrite(p, np.full((16, 16), 5, np.uint16), extratags=[(306, "s", 0, value, True)])
    out = decode(p)
    assert int(out.pixels[0, 0]) == 5
    at = out.acquired_at
    assert at is None or EARLIEST_ACQUISITION <= at <= datetime.now(timezone.utc) + timedelta(days=1)
