"""Class 5: a model file replaced on disk is never served under the old version's name, and
an engine cache that fails to load is moved aside and rebuilt instead of stopping the
daemon. Real daemon processes, real registry, real ONNX Runtime / OpenVINO sessions."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import cells_image, write_tiff
from read_only import read_only  # tests/ is on the path

from nscmonitor.engines.tiny import build_tiny_classifier
from nscmonitor.store.db import ensure_schema, open_engine


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
        return c.execute(sql).fetchall()


def _wait(cond, what: str, proc: subprocess.Popen | None = None, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"daemon exited ({proc.returncode}) waiting for {what}: {proc.stderr.read()}")
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.slow
def test_replaced_model_file_is_refused_and_the_loaded_engine_keeps_serving(tmp_path: Path, tiny_model: Path) -> None:
    from nscmonitor.registry.registry import Registry

    db, models, watch = tmp_path / "nsc.db", tmp_path / "registry", tmp_path / "w"
    watch.mkdir()
    url = f"sqlite:///{db}"
    engine = open_engine(url)
    ensure_schema(engine)
    info = Registry(models, engine).register(tiny_model)
    assert info.state == "active"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'database_url = "{url}"\nmodels_dir = "{models}"\nlog_dir = "{tmp_path / "logs"}"\n'
                   'engine = "ort-cpu"\n', encoding="utf-8")
    base = [sys.executable, "-m", "nscmonitor"]
    proc = subprocess.Popen([*base, "run", "--config", str(cfg), "--watch", str(watch), "--experiment", "E",
                             "--quiet", "0", "--polling", "--no-schedule"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        write_tiff(watch / "P1_A01_s1.tif", cells_image(1))
        _wait(lambda: _rows(db, "select count(*) from images where status='done'")[0][0] == 1, "first image", proc)

        other = tmp_path / "other.onnx"
        build_tiny_classifier(other, input_size=32, seed=7, version=info.version.rsplit("-", 1)[0])
        shutil.copyfile(other, info.path)  # same name, same declared version, other weights
        _wait(lambda: _rows(db, "select count(*) from events where kind='model_refused'")[0][0] >= 1,
              "the refusal event", proc, timeout=30)

        write_tiff(watch / "P1_A02_s1.tif", cells_image(2))
        _wait(lambda: _rows(db, "select count(*) from images where status='done'")[0][0] == 2, "second image", proc)
        served = {r[0] for r in _rows(db, "select distinct model_version from predictions")}
        assert served == {info.version}
        time.sleep(6)  # at least one more heartbeat: the refusal is reported once, not every time
        assert _rows(db, "select count(*) from events where kind='model_refused'")[0][0] == 1
        msg = _rows(db, "select message from events where kind='model_refused'")[0][0]
        assert "changed on disk" in msg and info.version in msg and str(info.path) in msg

        status = subprocess.run([*base, "status", "--config", str(cfg), "--json"], capture_output=True, text=True,
                                timeout=60)
        h = json.loads(status.stdout)
        assert h["model_integrity"]["ok"] is False and "changed on disk" in h["model_integrity"]["problem"]
        assert any("model refused" in w for w in h["warnings"])
        assert h["daemon"]["model_version"] == info.version
        text = subprocess.run([*base, "status", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
        assert "model refused" in text.stdout
        doctor = subprocess.run([*base, "doctor", "--config", str(cfg)], capture_output=True, text=True, timeout=120)
        line = next(x for x in doctor.stdout.splitlines() if "active model file" in x)
        assert line.startswith("--") and "changed on disk" in line
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        proc.stderr.close()
    restart = subprocess.run([*base, "run", "--config", str(cfg), "--watch", str(watch), "--once"],
                             capture_output=True, text=True, timeout=120)
    assert restart.returncode == 2 and "Traceback" not in restart.stderr
    assert restart.stderr.count("\n") == 1 and "refusing to serve model" in restart.stderr


def test_promoting_a_changed_file_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    from nscmonitor.core.errors import UserFacingError
    from nscmonitor.registry.registry import Registry

    engine = open_engine(f"sqlite:///{tmp_path / 'nsc.db'}")
    ensure_schema(engine)
    reg = Registry(tmp_path / "registry", engine)
    first = reg.register(tiny_model)
    second_src = tmp_path / "second.onnx"
    build_tiny_classifier(second_src, input_size=32, seed=3, version="second")
    second = reg.register(second_src)
    assert second.state == "candidate"
    Path(second.path).write_bytes(Path(second.path).read_bytes() + b"\0")
    with pytest.raises(UserFacingError, match="changed on disk"):
        reg.promote(second.version)
    assert reg.active().version == first.version


def test_static_model_changed_after_start_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    from nscmonitor.scoring.serving import static_model_source
    from nscmonitor.registry.registry import ModelIntegrityError

    model = tmp_path / "m.onnx"
    shutil.copyfile(tiny_model, model)
    source = static_model_source(model)
    path, version = source()
    assert path == model
    build_tiny_classifier(model, input_size=32, seed=9)
    with pytest.raises(ModelIntegrityError, match="changed on disk"):
        source()


def test_corrupt_optimised_graph_cache_with_intact_stamp_is_moved_aside(tmp_path: Path, tiny_model: Path) -> None:
    """The daemon used to stop on every start; now both starts score."""
    db, models, watch = tmp_path / "nsc.db", tmp_path / "registry", tmp_path / "w"
    write_tiff(watch / "P1_A01_s1.tif", cells_image(1))
    cmd = [sys.executable, "-m", "nscmonitor", "run", "--db", f"sqlite:///{db}", "--watch", str(watch),
           "--model", str(tiny_model), "--engine", "ort-cpu", "--quiet", "0", "--once"]
    env_cfg = tmp_path / "c.toml"
    env_cfg.write_text(f'models_dir = "{models}"\nlog_dir = "{tmp_path / "logs"}"\n', encoding="utf-8")
    first = subprocess.run([*cmd, "--config", str(env_cfg)], capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    cache = models / "engines" / "tiny.optimized.onnx"
    stamp = cache.with_name(cache.name + ".stamp")
    assert cache.is_file() and stamp.is_file()
    stamp_text = stamp.read_text()
    cache.write_bytes(b"\x08\x07torn write" * 10)
    write_tiff(watch / "P1_A02_s1.tif", cells_image(2))
    second = subprocess.run([*cmd, "--config", str(env_cfg)], capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    aside = sorted(p.name for p in cache.parent.iterdir() if ".corrupt-" in p.name)
    assert len(aside) == 2 and any(n.startswith("tiny.optimized.onnx.corrupt-") for n in aside)
    assert (cache.parent / next(n for n in aside if ".stamp" not in n)).read_bytes().startswith(b"\x08\x07torn")
    assert cache.read_bytes() != b"\x08\x07torn write" * 10 and stamp.read_text() == stamp_text
    assert _rows(db, "select count(*) from images where status='done'")[0][0] == 2


def test_unreadable_int8_file_is_moved_aside_and_fp32_serves(tmp_path: Path, tiny_model: Path) -> None:
    from nscmonitor.engines.ort import int8_path_for
    from nscmonitor.engines.select import select

    int8 = int8_path_for(tiny_model)
    int8.write_bytes(b"not an onnx model")
    sel = select(tiny_model, "ort-int8", batch_size=2, threads=1)
    try:
        assert sel.engine.name == "ort-fp32"
        reason = dict(sel.skipped)["ort-int8"]
        assert "moved aside" in reason
    finally:
        sel.engine.close()
    assert not int8.exists()
    aside = [p for p in int8.parent.iterdir() if p.name.startswith(int8.name + ".corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == b"not an onnx model"


def test_corrupt_openvino_cache_does_not_stop_loading(tmp_path: Path, tiny_model: Path) -> None:
    pytest.importorskip("openvino")
    from nscmonitor.engines.metadata import read_onnx_metadata
    from nscmonitor.engines.openvino import OpenVinoEngine

    meta = read_onnx_metadata(tiny_model)
    cache = tmp_path / "ov-cache"
    x = np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32)
    eng = OpenVinoEngine(tiny_model, meta, cache_dir=cache)
    eng.load()
    want = eng._run(x)
    eng.close()
    blobs = [p for p in cache.rglob("*") if p.is_file()]
    assert blobs, "OpenVINO wrote no cache"
    for b in blobs:
        b.write_bytes(b"\x00garbage" * 8)
    again = OpenVinoEngine(tiny_model, meta, cache_dir=cache)
    again.load()
    np.testing.assert_allclose(again._run(x), want, rtol=1e-5, atol=1e-6)
    again.close()


def test_openvino_s_compiled_models_are_cached_per_cpu_beside_the_model(tmp_path: Path, tiny_model: Path) -> None:
    """A models folder that moves to a PC (or a VM to a host) whose CPU shares the brand string
    but not the instruction sets must not load the other CPU's compiled graph: each CPU, named by
    its model name and instruction sets, gets its own folder, beside the model it was compiled
    from (so a version's folder holds its engines and goes with them), not in the caller's cache."""
    pytest.importorskip("openvino")
    from nscmonitor.engines.metadata import read_onnx_metadata
    from nscmonitor.engines.ort import cpu_id
    from nscmonitor.engines.select import make_engine, openvino_cache_dir

    lab = tmp_path / "lab"
    version = lab / "versions" / "v1"
    version.mkdir(parents=True)
    model = version / "model.onnx"
    shutil.copy2(tiny_model, model)
    caches = lab / "engines"
    here = openvino_cache_dir(model, caches, cpu_id())
    assert openvino_cache_dir(model, caches) == here and openvino_cache_dir(model, None) is None
    assert here.parent == version / "openvino-cache"
    assert openvino_cache_dir(model, caches, "AMD EPYC [avx2 fma]") != openvino_cache_dir(
        model, caches, "AMD EPYC [avx2 avx512_bf16 avx512_vnni avx512bw avx512f fma]")
    eng = make_engine("openvino-fp32", model, read_onnx_metadata(model), batch_size=2, threads=1,
                      cache_dir=caches)
    eng.load()
    eng.infer(np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32))
    eng.close()
    written = [p for p in lab.rglob("*") if p.is_file() and p != model]
    assert written and all(p.parent == here for p in written), written


def test_the_daemon_removes_the_old_shared_openvino_cache_at_start(tmp_path: Path, tiny_model: Path) -> None:
    """Versions before the cache moved beside each model kept every version's compiled graphs
    in one shared folder that nothing reads any more; a daemon start frees it, and leaves the
    rest of the models folder (other engines' caches) as it is."""
    from conftest import settings_for

    from nscmonitor.daemon import build_runner

    watch = tmp_path / "watch"
    watch.mkdir()
    settings = settings_for(tmp_path, watch)
    shared = settings.models_dir / "engines" / "openvino"
    (shared / "08c46528f99c").mkdir(parents=True)
    (shared / "08c46528f99c" / "1234.blob").write_bytes(b"x" * 5000)
    (shared / "5678.blob").write_bytes(b"y" * 3000)
    other = settings.models_dir / "engines" / "model.optimized.onnx"
    other.write_bytes(b"kept")
    build_runner(settings, model=tiny_model, retry_base_s=0.1).run(once=True)
    assert not shared.exists()
    assert other.read_bytes() == b"kept"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions and mounts")
def test_a_model_in_a_read_only_folder_is_served_without_an_openvino_cache(tmp_path: Path, tiny_model: Path) -> None:
    pytest.importorskip("openvino")
    from nscmonitor.engines.metadata import read_onnx_metadata
    from nscmonitor.engines.select import make_engine, openvino_cache_dir

    folder = tmp_path / "share"
    folder.mkdir()
    shutil.copy2(tiny_model, folder / "model.onnx")
    with read_only(folder) as share:
        model = share / "model.onnx"
        assert openvino_cache_dir(model, tmp_path / "engines") is None
        eng = make_engine("openvino-fp32", model, read_onnx_metadata(model), batch_size=2, threads=1,
                          cache_dir=tmp_path / "engines")
        eng.load()
        assert eng.infer(np.zeros((2, 1, 32, 32), dtype=np.float32)).shape[0] == 2
        eng.close()
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx"]
    assert not [p for p in (tmp_path / "engines").rglob("*") if p.is_file()]
