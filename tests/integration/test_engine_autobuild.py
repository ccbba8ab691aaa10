"""Build on arrival with real parts: a tiny real ONNX model with its own calibration set, real
ONNX Runtime / OpenVINO int8 builds in a real subprocess, a real SQLite store and registry,
a real watcher. Registering a model yields a gated int8 engine the daemon serves with no
manual step; a failing gate keeps fp32 and says why in ``status --json``; a daemon started
without an engine serves fp32 and swaps to int8 in the middle of a backlog without losing
or double-scoring an image."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import cells_image, write_tiff
from sqlalchemy import func, select
from retrain_setup import cpu_int8
from test_engines_int8_select import confident_tiny, write_tiles

from nscmonitor.cli import main
from nscmonitor.config import load_settings
from nscmonitor.daemon import build_runner
from nscmonitor.engines import autobuild
from nscmonitor.engines.autobuild_status import SPEED_KEYS
from nscmonitor.engines.calibration import tiles_from_folder
from nscmonitor.registry.registry import Registry
from nscmonitor.store import models as m
from nscmonitor.store.db import open_engine


def wait_until(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def score_backlog(runner, db_url: str, n: int, what: str) -> None:
    """Run the set-up daemon on its own thread until ``n`` images have predictions, then stop it."""
    daemon = threading.Thread(target=runner.run, daemon=True)
    daemon.start()
    try:
        wait_until(lambda: len(engines_by_image(db_url)) == n, 120, what)
    finally:
        runner.stop_event.set()
        daemon.join(30)


def run_dir_with_calibration(tmp_path: Path, *, strict: bool = False) -> Path:
    """A training run's folder: model.onnx plus the calibration set that travels with it."""
    run = tmp_path / "run"
    meta = confident_tiny(run / "model.onnx")
    if strict:  # a gate no int8 model can pass: every probability must match exactly
        import onnx

        from nscmonitor.engines.metadata import write_onnx_metadata

        proto = onnx.load(str(run / "model.onnx"))
        write_onnx_metadata(proto, replace(meta, int8_tolerance={"top1_agreement": 1.0, "well_readout_pp": 0.0}))
        onnx.save(proto, str(run / "model.onnx"))
    tiles_from_folder(write_tiles(tmp_path / "tiles"), run)
    return run


def config(tmp_path: Path, watch: Path, hook: str | None = None, engine: str = "auto") -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'''
engine = "{engine}"
database_url = "sqlite:///{tmp_path / 'nsc.db'}"
models_dir = "{tmp_path / 'models'}"
log_dir = "{tmp_path / 'logs'}"
[[watch]]
path = "{watch}"
experiment = "E1"
quiet_seconds = 0.0
''' + (f"[retrain]\nhook = {json.dumps(hook)}\n" if hook else ""))
    return cfg


def frames(watch: Path, n: int) -> None:
    for i in range(n):
        write_tiff(watch / f"VID1_A{i % 12 + 1}_{i // 12 + 1}_00d00h00m.tif", cells_image(i, shape=(64, 128)))


def engines_by_image(db_url: str) -> dict[int, list[str]]:
    with open_engine(db_url).connect() as c:
        rows = c.execute(select(m.Prediction.image_id, m.Prediction.engine)).all()
    out: dict[int, list[str]] = {}
    for image_id, engine in rows:
        out.setdefault(image_id, []).append(engine)
    return out


def test_registering_a_model_builds_a_gated_int8_engine_the_daemon_serves(tmp_path: Path, capsys) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    cfg = config(tmp_path, watch, engine=cpu_int8())
    run = run_dir_with_calibration(tmp_path)
    assert main(["--config", str(cfg), "models", "register", str(run)]) == 0
    assert re.search(r"(int8|bf16) for", capsys.readouterr().out)
    settings = load_settings(cfg, env={})
    active = Registry(settings.models_dir, open_engine(settings.database_url)).active()
    status = autobuild.read_status(active.path)
    assert status.state == "ready" and status.engine in autobuild.SPEED_FIELDS, status  # int8, or bf16 if faster
    assert status.gate["passed"] and status.gate["top1_agreement"] >= 0.99
    # the gated readout figures are recorded beside the held-out wells' own
    assert status.gate["shared_readout_pp"] <= 1.0 and 0.0 <= status.gate["tile_noise_ratio"] <= 0.2
    assert status.gate["well_readout_pp"] >= 0.0
    assert (Path(active.path).parent / status.artefact).is_file() and status.build_seconds > 0
    assert status.fingerprint["model_sha256"] == active.sha256

    assert main(["--config", str(cfg), "models", "show", active.version]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["engine"]["state"] == "ready" and shown["engine"]["engine"] == status.engine
    assert shown["ood"]["available"] is False  # this tiny model carries no OOD score, and says so

    # The settings name the CPU int8 engine, so it serves even where the build's timing found
    # it slower than fp32 for this tiny model and recorded the other runtime's int8 as the
    # one auto would serve (both share the gated file; each passed its own gate).
    served = cpu_int8()
    assert any(a["engine"] == served and a["passed"] for a in status.attempts), status.attempts
    frames(watch, 6)
    runner = build_runner(settings, retry_base_s=0.05, poll_interval=0.1)
    runner.setup()
    assert runner.model.engine.name == served
    runner.run(once=True)
    used = engines_by_image(settings.database_url)
    assert len(used) == 6 and all(v == [served] for v in used.values())
    assert main(["--config", str(cfg), "export", "--experiment", "E1", "-o", str(tmp_path / "report.csv")]) == 0
    import csv

    with open(tmp_path / "report_images.csv", newline="") as fh:
        assert {row["engine"] for row in csv.DictReader(fh)} == {served}

    # nothing changed, so no second build: the recorded outcome stands
    before = autobuild.status_path(active.path).stat().st_mtime_ns
    assert main(["--config", str(cfg), "models", "promote", active.version]) == 0
    assert autobuild.status_path(active.path).stat().st_mtime_ns == before


def test_a_failing_gate_keeps_fp32_and_status_json_says_why(tmp_path: Path, capsys) -> None:
    import sys

    watch = tmp_path / "watch"
    watch.mkdir()
    received = tmp_path / "hook.jsonl"
    script = tmp_path / "hook.py"
    script.write_text(f"import sys\nopen({str(received)!r}, 'a').write(sys.stdin.read() + '\\n')\n")
    cfg = config(tmp_path, watch, hook=f"{sys.executable} {script}")
    run = run_dir_with_calibration(tmp_path, strict=True)
    assert main(["--config", str(cfg), "models", "register", str(run)]) == 0
    out = capsys.readouterr().out
    assert "no built engine" in out and "gate" in out
    settings = load_settings(cfg, env={})
    active = Registry(settings.models_dir, open_engine(settings.database_url)).active()
    status = autobuild.read_status(active.path)
    assert status.state == "failed" and "well readout differs" in status.reason and status.attempts
    assert not any(a["passed"] for a in status.attempts)

    frames(watch, 3)
    runner = build_runner(settings, retry_base_s=0.05, poll_interval=0.1, heartbeat_s=0.0)
    runner.setup()
    assert runner.model.engine.name == "ort-fp32"
    runner.run(once=True)
    assert all(v == ["ort-fp32"] for v in engines_by_image(settings.database_url).values())
    # the daemon does not rebuild a build that failed under the same fingerprint
    assert autobuild.read_status(active.path).finished_at == status.finished_at

    code = main(["--config", str(cfg), "status", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 3  # the once-run daemon has stopped
    build = report["engine_build"]
    assert build["state"] == "failed" and "well readout differs" in build["reason"]
    assert "fp32" in build["message"]
    assert report["model_ood"]["available"] is False  # the served tiny model has no OOD score
    assert main(["--config", str(cfg), "status"]) == 3
    assert "its out-of-distribution flag: unavailable" in " ".join(capsys.readouterr().out.split())
    with open_engine(settings.database_url).connect() as c:
        kinds = [k for (k,) in c.execute(select(m.Event.kind))]
    assert "engine_build_failed" in kinds
    # the notification hook heard it from the register command and from the daemon
    notes = [json.loads(line) for line in received.read_text().splitlines() if line.strip()]
    assert len(notes) >= 2 and all(n["kind"] == "engine_build_failed" for n in notes)
    assert all("well readout differs" in n["message"] for n in notes)


def test_daemon_without_an_engine_serves_fp32_and_swaps_to_int8_mid_backlog(tmp_path: Path) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    cfg = config(tmp_path, watch, engine=cpu_int8())
    run = run_dir_with_calibration(tmp_path)
    assert main(["--config", str(cfg), "models", "register", str(run), "--no-engine"]) == 0
    settings = load_settings(cfg, env={})
    active = Registry(settings.models_dir, open_engine(settings.database_url)).active()
    assert autobuild.read_status(active.path) is None
    n = 40
    frames(watch, n)
    runner = build_runner(settings, retry_base_s=0.05, poll_interval=0.1, heartbeat_s=0.1, claim_size=2)
    done = {"n": 0}

    def built() -> bool:
        st = autobuild.read_status(active.path)
        return st is not None and st.state != "building" and not st.pending

    def slow_until_built(k: int) -> None:
        """Half the backlog is scored while the build runs; then the loop waits for the build's
        end (standing in for a slow fp32 engine on a big model) so the swap lands mid-backlog.
        Its end, not a first engine serving meanwhile: the engine served at the end must not
        depend on how far the build had got."""
        done["n"] += k
        if done["n"] >= n // 2:
            wait_until(built, 120, "the background build")

    runner.on_batch = slow_until_built
    runner.setup()
    assert runner.model.engine.name == "ort-fp32" and runner.model.engine_token is None
    score_backlog(runner, settings.database_url, n, "the backlog to be scored")
    status = autobuild.read_status(active.path)
    assert status.state == "ready" and not status.pending
    # The engine named in the settings serves once its gate passed, even where the build timed
    # another one faster (the build's choice, ``status.engine``, decides in auto mode only).
    preferred_passed = any(a["engine"] == cpu_int8() and a["passed"] for a in status.attempts)
    expected = cpu_int8() if preferred_passed else status.engine
    assert runner.model.engine.name == expected
    used = engines_by_image(settings.database_url)
    with open_engine(settings.database_url).connect() as c:
        n_images = c.scalar(select(func.count()).select_from(m.Image))
        swaps = c.execute(select(m.Event.message).where(m.Event.kind == "engine_swapped")
                          .order_by(m.Event.id)).all()
    assert n_images == n and len(used) == n, "an image was lost"
    assert all(len(v) == 1 for v in used.values()), "an image was scored twice"
    names = [v[0] for v in used.values()]
    assert names.count("ort-fp32") >= n // 2 and names.count(expected) >= 1
    # one swap, or two where an engine certified early (bf16) served until the build's end
    assert 1 <= len(swaps) <= 2 and expected in swaps[-1][0]


def test_a_daemon_in_auto_mode_keeps_fp32_when_the_built_engine_is_slower_and_says_so(tmp_path: Path) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    cfg = config(tmp_path, watch)
    run = run_dir_with_calibration(tmp_path)
    assert main(["--config", str(cfg), "models", "register", str(run), "--no-engine"]) == 0
    settings = load_settings(cfg, env={})
    active = Registry(settings.models_dir, open_engine(settings.database_url)).active()
    runner = build_runner(settings, retry_base_s=0.05, poll_interval=0.1)
    runner.setup()  # no engine here yet: serves fp32 and starts the build in the background
    assert runner.model.engine.name == "ort-fp32"
    wait_until(lambda: autobuild.token(active.path) is not None, 120, "the background build")
    runner.engine_builds.close()
    built = autobuild.read_status(active.path)
    field = autobuild.SPEED_FIELDS[built.engine]

    def events(kind: str) -> list[str]:
        with open_engine(settings.database_url).connect() as c:
            return [msg for (msg,) in c.execute(select(m.Event.message).where(m.Event.kind == kind))]

    # the build's own timing decides, whichever way it went here; then each way on purpose
    real = autobuild.slower_than_fp32(getattr(built, field))
    key = SPEED_KEYS[field]  # the engine's own figure: int8_tiles_per_s, or bf16_ where the bf16 engine won
    faster = {"fp32_tiles_per_s": 100.0, key: 120.0}
    slower_ = {"fp32_tiles_per_s": 100.0, key: 50.0}
    # each outcome twice in a row: int8 rebuilt while int8 serves is a swap to the new file;
    # fp32 still serving after a build is "kept"
    cases = [(None, real), (faster, False), (faster, False), (slower_, True), (slower_, True)]
    for i, (speed, slower) in enumerate(cases):
        if speed is not None:
            autobuild.write_status(active.path,
                                   replace(built, **{field: speed}, finished_at=f"{built.finished_at}#{i}"))
        kept, swapped = len(events("engine_kept")), len(events("engine_swapped"))
        before = runner.model.engine.name
        assert runner.slot.load() is True  # a new build outcome: the engine is chosen again
        assert runner.model.engine.name == ("ort-fp32" if slower else built.engine)
        stayed = before == runner.model.engine.name == "ort-fp32"
        assert (len(events("engine_kept")), len(events("engine_swapped"))) == (kept + stayed, swapped + (not stayed))
        assert ("slower than fp32 here" in autobuild.describe(autobuild.read_status(active.path))) == slower


def test_decide_retries_only_when_something_changes() -> None:
    fp = autobuild.Fingerprint("m" * 64, "c" * 64, {"onnxruntime": "onnxruntime 1.0"}, "cpu")
    failed = autobuild.EngineStatus("failed", {**fp.__dict__}, reason="gate")
    ready = autobuild.EngineStatus("ready", {**fp.__dict__}, engine="ort-int8", artefact="model.int8.onnx")
    assert autobuild.decide(None, fp, artefact_present=False, build_running=False) == "build"
    assert autobuild.decide(failed, fp, artefact_present=False, build_running=False) == "keep"
    assert autobuild.decide(ready, fp, artefact_present=True, build_running=False) == "ready"
    assert autobuild.decide(ready, fp, artefact_present=False, build_running=False) == "build"
    assert autobuild.decide(ready, fp, artefact_present=True, build_running=True) == "wait"
    for changed in (replace(fp, model_sha256="n" * 64), replace(fp, calibration_sha256=None),
                    replace(fp, runtimes={"onnxruntime": "onnxruntime 2.0"}), replace(fp, machine="other cpu"),
                    replace(fp, recipe="next")):
        assert autobuild.decide(failed, changed, artefact_present=False, build_running=False) == "build"
    assert fp.changes(failed.fingerprint) == []
    assert replace(fp, machine="x").changes(failed.fingerprint) == ["machine"]
    # a record written before the build recipe was part of it: built again by the new code
    older = {k: v for k, v in fp.__dict__.items() if k != "recipe"}
    assert fp.changes(older) == ["engine build recipe"]
    assert autobuild.decide(replace(ready, fingerprint=older), fp, artefact_present=True,
                            build_running=False) == "build"
    interrupted = replace(ready, state="building")
    assert autobuild.decide(interrupted, fp, artefact_present=False, build_running=False) == "build"


def test_plan_follows_the_selection_order() -> None:
    assert autobuild.plan(tensorrt_gpu=True, openvino=True) == ("tensorrt-int8", "tensorrt-fp16", "openvino-int8")
    assert autobuild.plan(tensorrt_gpu=False, openvino=False) == ("ort-int8",)
    assert autobuild.plan(tensorrt_gpu=False, openvino=True, bf16=True) == ("openvino-int8", "openvino-bf16")
    assert autobuild.plan(tensorrt_gpu=False, openvino=False, bf16=True) == ("ort-int8",)  # bf16 is OpenVINO's
    assert autobuild.plan(tensorrt_gpu=False, openvino=True, torch_cuda=True) == ("torch-cuda-fp16", "openvino-int8")
    assert autobuild.plan(tensorrt_gpu=True, openvino=False, torch_cuda=True) == (
        "tensorrt-int8", "tensorrt-fp16", "torch-cuda-fp16", "ort-int8")


def test_build_lock_excludes_a_second_builder_and_is_released(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")
    first = autobuild.BuildLock(autobuild.lock_path(model))
    assert first.acquire() and autobuild.build_running(model)
    assert not autobuild.BuildLock(autobuild.lock_path(model)).acquire()
    first.release()
    assert not autobuild.build_running(model)


def test_a_torn_status_file_means_rebuild_not_crash(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")
    autobuild.status_path(model).write_text('{"state": "ready", "fingerp')
    assert autobuild.read_status(model) is None
    assert autobuild.summary(model)["state"] == "none"
    np.testing.assert_equal(autobuild.token(model), None)
    # a hand-edited timing the selector would read is refused the same way
    record = {"state": "ready", "fingerprint": {}, "engine": "openvino-int8", "artefact": "model.int8.onnx"}
    for bad in ({"fp32_tiles_per_s": "fast", "int8_tiles_per_s": 3.0}, {"fp32_tiles_per_s": 1.0}, [1, 2],
                {"fp32_tiles_per_s": float("nan"), "int8_tiles_per_s": 3.0}):
        autobuild.status_path(model).write_text(json.dumps({**record, "openvino_speed": bad}))
        assert autobuild.read_status(model) is None and autobuild.speed_refusal(model, "openvino-int8") is None
    good = {"fp32_tiles_per_s": 10.0, "int8_tiles_per_s": 5.0}
    autobuild.status_path(model).write_text(json.dumps({**record, "openvino_speed": good}))
    assert autobuild.read_status(model).openvino_speed == good
    # the precision OpenVINO would run the non-int8 layers in is read from the same record
    for bad in ("fp8", 16, None):
        autobuild.status_path(model).write_text(json.dumps({**record, "openvino_speed": {**good, "precision": bad}}))
        assert autobuild.read_status(model) is None
    # and so are the large request's timing and batch, which selection reads as well
    for bad in ({"int8_f32_large_tiles_per_s": "fast"}, {"int8_f32_large_tiles_per_s": -1.0},
                {"large_batch": 0}, {"large_batch": "64"}, {"large_batch": True}):
        autobuild.status_path(model).write_text(json.dumps({**record, "openvino_speed": {**good, **bad}}))
        assert autobuild.read_status(model) is None, bad
    for bad in ({"int8_f32_large_streams": 3}, {"int8_f32_large_streams": "2"}, {"int8_f32_large_streams": True},
                {"int8_f32_large_streams": 2.0}):  # how many parallel large requests selection compiles
        autobuild.status_path(model).write_text(json.dumps({**record, "openvino_speed": {**good, **bad}}))
        assert autobuild.read_status(model) is None, bad
    large = {**good, "int8_f32_tiles_per_s": 5.0, "int8_f32_large_tiles_per_s": 6.0, "large_batch": 64,
             "int8_f32_large_two_streams_tiles_per_s": 7.0, "int8_f32_large_streams": 2}
    autobuild.status_path(model).write_text(json.dumps({**record, "openvino_speed": large}))
    assert autobuild.read_status(model).openvino_speed == large
    # the bf16 engine's record is held to the same rule, with its own figure
    for bad in ({"fp32_tiles_per_s": 10.0, "int8_tiles_per_s": 5.0}, {"fp32_tiles_per_s": 10.0, "bf16_tiles_per_s": 0},
                {"fp32_tiles_per_s": 10.0, "bf16_tiles_per_s": 5.0, "bf16_large_tiles_per_s": "fast"}):
        autobuild.status_path(model).write_text(json.dumps({**record, "openvino_bf16_speed": bad}))
        assert autobuild.read_status(model) is None and autobuild.speed_refusal(model, "openvino-bf16") is None, bad
    bf16 = {"fp32_tiles_per_s": 10.0, "bf16_tiles_per_s": 5.0, "bf16_large_tiles_per_s": 6.0, "large_batch": 64}
    autobuild.status_path(model).write_text(json.dumps({**record, "openvino_bf16_speed": bf16}))
    assert autobuild.read_status(model).openvino_bf16_speed == bf16



def test_a_model_from_elsewhere_is_served_fp32_until_given_a_calibration_set(tmp_path: Path, capsys) -> None:
    from nscmonitor.engines.tiny import build_tiny_classifier

    cfg = config(tmp_path, tmp_path / "watch")
    bare = tmp_path / "elsewhere" / "model.onnx"
    confident_tiny(bare)
    assert main(["--config", str(cfg), "models", "register", str(bare)]) == 0
    assert "no calibration set" in capsys.readouterr().out
    settings = load_settings(cfg, env={})
    first = Registry(settings.models_dir, open_engine(settings.database_url)).active()
    assert autobuild.read_status(first.path).state == "no-calibration"
    assert not autobuild.log_path(first.path).exists(), "no build process was needed to say so"

    other = tmp_path / "elsewhere2" / "model.onnx"
    build_tiny_classifier(other, weights={"fc_w": np.random.default_rng(100).normal(0, 3.0, (8, 4))},
                          version="from-elsewhere")  # confident_tiny's weights under another version
    assert main(["--config", str(cfg), "models", "register", str(other), "--calibration",
                 str(write_tiles(tmp_path / "tiles"))]) == 0
    assert re.search(r"(int8|bf16) for", capsys.readouterr().out)
    second = next(v for v in Registry(settings.models_dir, open_engine(settings.database_url)).list()
                  if v.version != first.version)
    status = autobuild.read_status(second.path)
    assert status.state == "ready" and status.engine in autobuild.SPEED_FIELDS
    assert status.calibration_source.endswith("calibration.npz")


@pytest.mark.parametrize("backend", ["ort-int8", "openvino-int8"])
def test_auto_serves_a_cpu_int8_engine_only_when_it_is_not_slower_than_fp32_here(tmp_path: Path, monkeypatch,
                                                                                backend: str) -> None:
    from nscmonitor.engines.select import select

    if backend == "ort-int8":
        monkeypatch.setenv("NSCMONITOR_DISABLE_OPENVINO", "1")  # ONNX Runtime's int8 is the CPU engine then
    elif not autobuild.has_openvino():
        pytest.skip("OpenVINO is not installed here")
    field = autobuild.SPEED_FIELDS[backend]
    model = tmp_path / "run" / "model.onnx"
    confident_tiny(model)
    tiles = write_tiles(tmp_path / "tiles")
    status = autobuild.run_build(model, calibration_dir=tiles, targets=(backend,))
    # certified whatever its speed (a retrain with require_engine may promote it), and timed here
    assert status.state == "ready" and status.engine == backend, status
    speed = getattr(status, field)
    assert speed["fp32_tiles_per_s"] > 0 and speed["int8_tiles_per_s"] > 0
    assert autobuild.summary(model)[field] == speed  # what status --json and models show report
    slower = autobuild.slower_than_fp32(speed)
    assert ("slower than fp32 here" in autobuild.describe(status)) == slower
    assert (select(model).backend == backend) == (not slower)

    # the selector follows the build's measurement, whichever way it went; naming the engine
    # serves it regardless
    for fp32, int8, served in ((100.0, 50.0, False), (100.0, 120.0, True)):
        autobuild.write_status(model, replace(status, **{field: {"fp32_tiles_per_s": fp32, "int8_tiles_per_s": int8}}))
        sel = select(model)
        assert (sel.backend == backend) == served, sel.skipped
        if not served:
            assert sel.backend == "ort-cpu" and "slower than fp32" in dict(sel.skipped)[backend]
        assert select(model, backend).backend == backend
    assert autobuild.slower_than_fp32({"fp32_tiles_per_s": 100.0, "int8_tiles_per_s": 99.0})
    assert not autobuild.slower_than_fp32({"fp32_tiles_per_s": 100.0, "int8_tiles_per_s": 100.0})


def test_openvino_serves_the_faster_certified_precision_of_the_non_int8_layers(tmp_path: Path) -> None:
    """Where the CPU has bf16 units the build gates and times the int8 file with its fp32
    layers in bf16 too, and the daemon's engine runs the faster of the certified precisions."""
    from nscmonitor.engines.openvino import PRECISION_TEXT, PRECISIONS, has_bf16
    from nscmonitor.engines.select import select

    if not autobuild.has_openvino():
        pytest.skip("OpenVINO is not installed here")
    model = tmp_path / "run" / "model.onnx"
    confident_tiny(model)
    status = autobuild.run_build(model, calibration_dir=write_tiles(tmp_path / "tiles"), targets=("openvino-int8",))
    assert status.state == "ready" and status.engine == "openvino-int8", status
    speed = status.openvino_speed
    timed = {p: speed[f"int8_{p}_tiles_per_s"] for p in PRECISIONS if f"int8_{p}_tiles_per_s" in speed}
    # the bf16 variants are gated and timed exactly where the CPU runs them
    assert set(timed) == ({"f32", "bf16-stem", "bf16"} if has_bf16() else {"f32"}), speed
    assert speed["precision"] == max(timed, key=timed.get) and speed["int8_tiles_per_s"] == max(timed.values())
    # decided at the daemon's batch; OpenVINO's large request (64 tiles of 64 px) timed and recorded beside it
    assert speed["large_batch"] == 64 and all(speed[f"int8_{p}_large_tiles_per_s"] > 0 for p in timed), speed
    assert "fp32_large_tiles_per_s" not in speed  # ONNX Runtime has no large request
    assert "in chunks of 64, frames of many tiles" in autobuild.describe(status)
    for precision, text in PRECISION_TEXT.items():
        if text:
            assert (text in autobuild.describe(status)) == (speed["precision"] == precision)
    from nscmonitor.engines.metadata import read_onnx_metadata
    from nscmonitor.engines.openvino import GATE_KEYS

    served_gate = read_onnx_metadata(model.parent / status.artefact).extra["int8"][GATE_KEYS[speed["precision"]]]
    assert status.gate["well_readout_pp"] == served_gate["well_readout_pp"]  # the figures of the variant that serves
    sel = select(model, "openvino-int8", batch_size=4)
    assert sel.engine.precision == speed["precision"] and sel.engine.request_batch == 4
    for precision in timed:  # whichever is not chosen, the status decides what serves
        autobuild.write_status(model, replace(status, openvino_speed={**speed, "precision": precision}))
        assert select(model, "openvino-int8").engine.precision == precision
    # the large request serves only where the build did not time it slower than the small one
    # (as one request of the chunk: whether the build timed two parallel ones faster is its own)
    p = speed["precision"]
    small = speed[f"int8_{p}_tiles_per_s"]
    one = {k: v for k, v in speed.items() if not k.endswith("_large_streams")}
    for large, want in ((small * 0.9, 0), (small * 0.98, 64), (small * 1.1, 64)):  # 2 % is timing noise
        autobuild.write_status(model, replace(status, openvino_speed={**one, f"int8_{p}_large_tiles_per_s": large}))
        assert select(model, "openvino-int8", batch_size=8).engine.large_batch == want
    # two parallel large requests of half the chunk each, one thread each, were timed beside the
    # one (their outputs were the same to the bit, or they would not have been) and serve where
    # the build recorded them faster
    assert speed[f"int8_{p}_large_two_streams_tiles_per_s"] > 0, speed
    for streams, want in ((None, (64, 1)), (2, (32, 2))):
        record = one if streams is None else {**one, f"int8_{p}_large_streams": streams}
        autobuild.write_status(model, replace(status, openvino_speed=record))
        engine = select(model, "openvino-int8", batch_size=8).engine
        assert (engine.large_batch, engine.large_streams, engine.preferred_batch) == (*want, 64)
        line = autobuild.describe(autobuild.read_status(model))
        assert "in chunks of 64, frames of many tiles" in line
        assert ("two parallel requests of 32" in line) == (streams == 2)
    # a daemon whose own batch is half the chunk keeps one large request (two would be no larger than its batch)
    engine = select(model, "openvino-int8", batch_size=32).engine
    assert (engine.large_batch, engine.large_streams) == (64, 1)


def test_a_build_that_dies_without_an_outcome_is_not_restarted_at_every_heartbeat(tmp_path: Path) -> None:
    """A build killed by the OOM killer (or a runtime crash) records nothing; the daemon must
    not start it again every few seconds for weeks, only when the model or runtimes change."""
    from nscmonitor.scoring.engine_builds import DaemonEngineBuilds

    run = run_dir_with_calibration(tmp_path)
    model = run / "model.onnx"
    builds = DaemonEngineBuilds(load_settings(config(tmp_path, tmp_path / "watch")))
    builds.ensure(model)
    proc = builds._procs[model]
    proc.kill()  # what the OOM killer does
    proc.wait(timeout=30)
    assert autobuild.needed(model)[0] == "build"  # nothing was recorded
    builds.ensure(model)  # reaps it and gives up for this fingerprint
    assert model not in builds._procs
    builds.ensure(model)
    assert model not in builds._procs, "restarted although nothing changed"
    # aliases of backends that need no build turn building off like their canonical names
    assert not autobuild.wants_build("openvino") and not autobuild.wants_build("torch-fp32")


def test_a_build_that_runs_past_its_limit_is_stopped_and_not_restarted_at_every_heartbeat(tmp_path: Path) -> None:
    """A build that hangs (a runtime deadlocked) must not say "building" for weeks: past the
    daemon's limit it is stopped (its lock freed) and, like one that died, tried again only at
    the next start or when the model or runtimes change."""
    from nscmonitor.scoring.engine_builds import DaemonEngineBuilds

    model = run_dir_with_calibration(tmp_path) / "model.onnx"
    now = [0.0]  # the daemon's clock, moved by hand past the limit of hours
    builds = DaemonEngineBuilds(load_settings(config(tmp_path, tmp_path / "watch")), clock=lambda: now[0])
    builds.ensure(model)
    proc = builds._procs[model]
    now[0] += builds.BUILD_LIMIT_S - 60
    builds.ensure(model)
    assert builds._procs.get(model) is proc, "stopped before its limit"
    now[0] += 120
    builds.ensure(model)  # its interpreter is still starting: the real build has not ended yet
    assert proc.poll() is not None and model not in builds._procs
    assert not autobuild.build_running(model) and autobuild.needed(model)[0] == "build"
    builds.ensure(model)
    assert model not in builds._procs, "restarted at a heartbeat although nothing changed"


def test_a_build_that_failed_for_the_machine_is_tried_again_after_a_growing_wait(tmp_path: Path, monkeypatch) -> None:
    """A failure of the machine, not of the model (here a real OS error: the int8 file's place
    is taken by a folder, as a full disk or a folder without write permission fail a build), is
    recorded as such, leaves nothing half-made beside the model and is built again: by a running
    daemon after an hour, then after two (not at every heartbeat), and at the next start; once
    the trouble is gone the build passes. (A refused gate is kept until something changes: the
    test above.)"""
    from nscmonitor.engines.ort import int8_path_for
    from nscmonitor.scoring.engine_builds import DaemonEngineBuilds

    monkeypatch.setenv("NSCMONITOR_DISABLE_OPENVINO", "1")  # one target, in this process and the build's
    run = run_dir_with_calibration(tmp_path)
    model = run / "model.onnx"
    blocker = int8_path_for(model)
    blocker.mkdir()
    status = autobuild.run_build(model)
    assert status.state == "failed" and status.transient, status
    assert status.reason.startswith("no engine could be built here") and status.attempts[0]["environment"]
    assert not list(run.glob("*.part*")), "a half-made int8 file stayed beside the model"
    assert autobuild.needed(model)[0] == "build"
    assert "a failure of this machine" in autobuild.summary(model)["message"] and autobuild.summary(model)["transient"]
    settings = load_settings(config(tmp_path, tmp_path / "watch"))
    now = [0.0]  # the daemon's clock, moved by hand: the waits are hours

    def tried(builds: DaemonEngineBuilds) -> bool:
        builds.ensure(model)
        proc = builds._procs.get(model)
        if proc is not None:
            proc.wait(timeout=300)
            builds.ensure(model)  # reaps it
        return proc is not None

    builds = DaemonEngineBuilds(settings, clock=lambda: now[0])
    assert tried(builds) and autobuild.read_status(model).transient  # failed again the same way
    assert not tried(builds), "restarted at a heartbeat although nothing changed"
    now[0] += builds.RETRY_FIRST_S - 60
    assert not tried(builds), "restarted before its wait"
    now[0] += 120
    assert tried(builds) and autobuild.read_status(model).transient  # after an hour, still full
    now[0] += builds.RETRY_FIRST_S + 60
    assert not tried(builds), "the second wait is twice the first"
    assert tried(DaemonEngineBuilds(settings))  # the next daemon start tries at once
    blocker.rmdir()  # the space freed
    now[0] += builds.RETRY_FIRST_S
    assert tried(builds)
    final = autobuild.read_status(model)
    assert final.state == "ready" and final.engine == "ort-int8" and not final.transient, final
    assert autobuild.needed(model)[0] == "ready" and not tried(builds)


def test_a_waited_for_build_is_stopped_at_its_time_limit(tmp_path: Path) -> None:
    """Scheduled retraining waits for its candidate's build with a limit: past it the build
    process is stopped and no engine is reported ready."""
    model = run_dir_with_calibration(tmp_path) / "model.onnx"
    t0 = time.monotonic()
    status = autobuild.ensure(model, quiet=True, timeout=0.2)
    assert time.monotonic() - t0 < 30
    assert status is None or status.state != "ready"
    assert not autobuild.build_running(model)
    assert autobuild.ensure(model, quiet=True).state == "ready"  # with time, the same build passes


def test_the_fp32_model_in_bf16_is_gated_timed_and_served_where_the_build_timed_it_fastest(tmp_path: Path) -> None:
    """Where the CPU has bf16 units the build also gates the fp32 model run by OpenVINO in bf16
    (no int8 file) and times it beside the int8 engines; the fastest certified CPU engine
    serves, the others are passed over in auto mode with the build's figures, and a bf16 engine
    without a passed gate under the current fingerprint never serves, not even when named."""
    from nscmonitor.engines import openvino_bf16
    from nscmonitor.engines.autobuild_status import TIMING_NOISE, choose_cpu_engine, speedup
    from nscmonitor.engines.openvino import has_bf16
    from nscmonitor.engines.select import select
    from nscmonitor.engines.tiny import build_tiny_classifier

    if not autobuild.has_openvino():
        pytest.skip("OpenVINO is not installed here")
    model = tmp_path / "run" / "model.onnx"
    meta = build_tiny_classifier(model, weights={"fc_w": np.random.default_rng(100).normal(0, 3.0, (8, 4))},
                                 ood_threshold=50.0)
    if has_bf16():  # nothing serves it before a build has checked it here
        assert "not built on this machine yet" in openvino_bf16.certified(model)
        assert select(model, "openvino-bf16").backend != "openvino-bf16"
    status = autobuild.run_build(model, calibration_dir=write_tiles(tmp_path / "tiles"),
                                 targets=("openvino-int8", "openvino-bf16"))
    assert status.state == "ready", status
    assert autobuild.targets_here()[-1] == ("openvino-bf16" if has_bf16() else "openvino-int8")
    if not has_bf16():
        assert not any(a["engine"] == "openvino-bf16" for a in status.attempts) and status.openvino_bf16_speed is None
        assert "no bf16 units" in openvino_bf16.certified(model)
        pytest.skip("this CPU has no bf16 units: the build did not try the bf16 engine, as checked")
    bf16 = next(a for a in status.attempts if a["engine"] == "openvino-bf16")
    assert bf16["passed"] and bf16["gate"]["passed"] and bf16["gate"]["backend"] == "openvino-bf16", bf16
    assert "OpenVINO bf16 requests of 8 and 64 tiles" in bf16["gate"]["tiles_source"]  # both requests gated
    assert bf16["gate"]["ood_threshold_reference"] == 50.0 and bf16["gate"]["ood_threshold"] > 0
    speed = status.openvino_bf16_speed
    assert speed["fp32_tiles_per_s"] > 0 and speed["bf16_tiles_per_s"] > 0 and speed["bf16_large_tiles_per_s"] > 0
    assert autobuild.summary(model)["openvino_bf16_speed"] == speed
    # what the build served is the fastest of the CPU engines it timed that were not slower than fp32
    # (a tie within the timing noise going to the one faster in large requests: tests/unit/test_engine_choice.py)
    timed = {e: getattr(status, f) for e, f in autobuild.SPEED_FIELDS.items() if getattr(status, f)}
    ranked = {e: speedup(s) for e, s in timed.items() if not autobuild.slower_than_fp32(s)}
    assert "openvino-bf16" in timed
    assert status.engine == choose_cpu_engine(timed) if ranked else status.engine in timed
    assert not ranked or speedup(timed[status.engine]) >= max(ranked.values()) * (1 - TIMING_NOISE)

    int8 = status.openvino_speed
    bf16_wins = replace(status, engine="openvino-bf16", gate=bf16["gate"],
                        openvino_speed={**int8, "fp32_tiles_per_s": 100.0, "int8_tiles_per_s": 150.0},
                        openvino_bf16_speed={**speed, "fp32_tiles_per_s": 100.0, "bf16_tiles_per_s": 400.0})
    autobuild.write_status(model, bf16_wins)
    sel = select(model, batch_size=4)
    assert sel.backend == "openvino-bf16" and sel.engine.name == "openvino-bf16" and sel.engine.precision == "bf16"
    assert "timed openvino-bf16 faster here (4.00x fp32 against 1.50x)" in dict(sel.skipped)["openvino-int8"]
    assert sel.engine.metadata.ood["threshold"] == pytest.approx(bf16["gate"]["ood_threshold"])  # its own mapping
    x = np.random.default_rng(0).uniform(0, 1, (5, 1, meta.input_size, meta.input_size)).astype(np.float32)
    assert sel.engine.infer(x).shape == (5, len(meta.classes))
    sel.engine.close()
    said = autobuild.describe(bf16_wins)
    assert "all of it in bf16" in said and "400 against 100 tiles/s" in said
    assert select(model, "openvino-int8").backend == "openvino-int8"  # named, the other one serves regardless

    int8_wins = {**int8, "fp32_tiles_per_s": 100.0, "int8_tiles_per_s": 300.0}
    autobuild.write_status(model, replace(bf16_wins, engine="openvino-int8", openvino_speed=int8_wins))
    assert select(model).backend == "openvino-int8"
    autobuild.write_status(model, replace(bf16_wins, openvino_bf16_speed={**speed, "fp32_tiles_per_s": 100.0,
                                                                          "bf16_tiles_per_s": 80.0}))
    # chosen but timed slower than fp32: the int8 engine, not slower, serves; bf16 only when named
    assert select(model).backend == "openvino-int8"
    assert "runs slower than fp32 on this machine (80.0 vs 100.0" in autobuild.speed_refusal(model, "openvino-bf16")
    assert select(model, "openvino-bf16").backend == "openvino-bf16"

    # a refused gate, or one made under another fingerprint, keeps it from serving even when named
    refused = tuple({**a, "passed": False, "reason": "well readout differs by 2 pp"} if a["engine"] == "openvino-bf16"
                    else a for a in bf16_wins.attempts)
    autobuild.write_status(model, replace(bf16_wins, attempts=refused))
    assert openvino_bf16.certified(model) == "failed its gate: well readout differs by 2 pp"
    sel = select(model, "openvino-bf16")
    assert sel.backend != "openvino-bf16" and "failed its gate" in dict(sel.skipped)["openvino-bf16"]
    autobuild.write_status(model, replace(bf16_wins, fingerprint={**bf16_wins.fingerprint, "machine": "another PC"}))
    assert "gated under another model, runtime or machine" in openvino_bf16.certified(model)


def test_the_bf16_gate_refuses_what_moves_the_readout(tmp_path: Path) -> None:
    """The same gate as an int8 file's: under a tolerance no rounding can meet it fails, with
    the reason, so the build records a refusal rather than a bf16 engine."""
    from nscmonitor.engines import openvino_bf16
    from nscmonitor.engines.calibration import calibration_and_heldout
    from nscmonitor.engines.openvino import has_bf16
    from nscmonitor.engines.ort import OrtCpuEngine
    from nscmonitor.engines.validate import predict_with_ood

    if not (autobuild.has_openvino() and has_bf16()):
        pytest.skip("needs OpenVINO on a CPU with bf16 units")
    model = tmp_path / "run" / "model.onnx"
    meta = confident_tiny(model)
    _, held = calibration_and_heldout(write_tiles(tmp_path / "tiles"), meta, n_calib=16)
    ref_engine = OrtCpuEngine(model, meta)
    ref_engine.load()
    ref = predict_with_ood(ref_engine, held.x)
    assert openvino_bf16.gate(model, meta, held, ref).passed
    strict = replace(meta, int8_tolerance={"top1_agreement": 1.0, "well_readout_pp": 0.0, "tile_noise_ratio": 0.0})
    report = openvino_bf16.gate(model, strict, held, ref)
    assert not report.passed and any("well readout differs" in r or "tile noise" in r for r in report.reasons)


def test_an_engine_certified_early_serves_while_the_build_goes_on(tmp_path: Path) -> None:
    """The fp32 model in bf16 is gated first (seconds); once it passed and was timed not slower
    than fp32, the build records it "ready" with the engines it still tries (``pending``), so
    the daemon's token changes and it serves while the int8 file is built and gated (minutes for
    a ResNet50 that needs layers kept fp32). While that record stands and the build runs, an
    int8 file the build has not timed yet is passed over; a build that died leaves its engine
    serving and is retried, and the retried build keeps it serving from its first step; the
    build's final record pends nothing."""
    from nscmonitor.engines.autobuild_status import BuildLock, lock_path
    from nscmonitor.engines.openvino import has_bf16
    from nscmonitor.engines.select import select
    from nscmonitor.engines.tiny import build_tiny_classifier

    if not (autobuild.has_openvino() and has_bf16()):
        pytest.skip("needs OpenVINO on a CPU with bf16 units (the engine certified early is the bf16 one)")
    model = tmp_path / "run" / "model.onnx"
    build_tiny_classifier(model, weights={"fc_w": np.random.default_rng(100).normal(0, 3.0, (8, 4))},
                          ood_threshold=50.0)
    seen: list[tuple[str, object]] = []

    def progress(msg: str) -> None:  # called by the build itself, between its steps
        if msg.startswith("quantising to int8"):
            seen.append((msg, autobuild.read_status(model)))

    with BuildLock(lock_path(model)) as lock:  # held as the build command holds it
        assert lock.acquire()
        status = autobuild.run_build(model, calibration_dir=(tiles := write_tiles(tmp_path / "tiles")),
                                     targets=("openvino-int8", "openvino-bf16"), progress=progress)
    assert status.state == "ready" and status.pending == () and status.openvino_bf16_speed, status
    (_, during), = seen  # the int8 file was started after the bf16 engine's record was written
    if autobuild.slower_than_fp32(status.openvino_bf16_speed):  # a tiny model may run faster in fp32
        assert during.state == "building" and during.pending == ()
    else:
        assert during.state == "ready" and during.engine == "openvino-bf16" and during.pending == ("openvino-int8",)
        assert not autobuild.slower_than_fp32(during.openvino_bf16_speed)  # timed at once, and again at the end
        assert [a["engine"] for a in during.attempts] == ["openvino-bf16"]
    assert status.openvino_speed and int8_file_present(model)  # the int8 file was built and timed after it
    # the same states by hand where the bf16 engine would serve early (above, by a real build)

    bf16 = next(a for a in status.attempts if a["engine"] == "openvino-bf16")
    interim = replace(status, engine="openvino-bf16", precision="bf16", artefact=model.name, gate=bf16["gate"],
                      attempts=(bf16,), openvino_speed=None, ort_speed=None, pending=("openvino-int8",),
                      openvino_bf16_speed={**status.openvino_bf16_speed, "fp32_tiles_per_s": 100.0,
                                           "bf16_tiles_per_s": 300.0})
    autobuild.write_status(model, interim)
    assert autobuild.read_status(model) == interim and autobuild.token(model).startswith("openvino-bf16@")
    with BuildLock(lock_path(model)) as lock:
        assert lock.acquire()  # the build still runs
        sel = select(model)
        assert sel.backend == "openvino-bf16", sel.skipped
        assert "still running and has not timed it" in dict(sel.skipped)["openvino-int8"]
        sel.engine.close()
        assert autobuild.needed(model)[0] == "wait"
        info = autobuild.summary(model)
        assert info["state"] == "building" and info["pending"] == ["openvino-int8"]
        assert "serves while the build goes on with openvino-int8" in info["message"]
    # the build died before its end: its engine still serves, and the rest is tried again
    assert autobuild.needed(model)[0] == "build"
    info = autobuild.summary(model)
    assert info["state"] == "interrupted" and "interrupted before it had tried openvino-int8" in info["message"]
    assert autobuild.speed_refusal(model, "openvino-int8") is None  # no build runs: nothing to wait for
    # retried, the build keeps that engine serving from its first step, under the same token (no reload)
    first: list[tuple[object, str | None]] = []
    before = autobuild.token(model)

    def at_first_step(msg: str) -> None:
        if not first or msg.startswith("quantising to int8"):  # and once bf16 has passed its gate again
            first.append((autobuild.read_status(model), autobuild.token(model)))

    with BuildLock(lock_path(model)) as lock:
        assert lock.acquire()
        again = autobuild.run_build(model, calibration_dir=tiles, targets=("openvino-int8", "openvino-bf16"),
                                    progress=at_first_step)
    (carried, carried_token), (regated, regated_token) = first
    assert carried.state == "ready" and carried.engine == "openvino-bf16" and carried.pending == ("openvino-int8",)
    assert carried.pid == os.getpid() and carried_token == before
    assert regated.engine == "openvino-bf16" and regated_token == before  # the same engine again: not reloaded
    assert again.state == "ready" and again.pending == () and again.pid is None
    for bad in ("openvino-int8", [1], {"a": 1}):
        autobuild.status_path(model).write_text(json.dumps({**interim.to_dict(), "pending": bad}))
        assert autobuild.read_status(model) is None, bad


def int8_file_present(model: Path) -> bool:
    from nscmonitor.engines.ort import int8_path_for

    return int8_path_for(model).is_file()


def test_a_real_build_serves_its_bf16_engine_before_the_int8_file_and_a_killed_build_keeps_it(tmp_path: Path) -> None:
    """The real build command in a subprocess, on a ResNet18 (where OpenVINO's bf16 runs well
    ahead of fp32 on a CPU with bf16 units): its record turns "ready" with the bf16 engine while
    it goes on with the int8 file, selection serves that engine at once, and a build killed then
    leaves it serving and asks to be retried."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from nscmonitor.engines.metadata import ModelMetadata
    from nscmonitor.engines.openvino import has_bf16
    from nscmonitor.engines.select import select
    from nscmonitor.engines.torch import export_onnx, with_prelude

    if not (autobuild.has_openvino() and has_bf16()):
        pytest.skip("needs OpenVINO on a CPU with bf16 units (the engine certified early is the bf16 one)")
    meta = ModelMetadata(name="r18", version="t", scheme="multiclass",
                         classes=("neuron", "astrocyte", "oligodendrocyte", "undifferentiated"), input_size=64,
                         arch="resnet18", normalization={"p_low": 1.0, "p_high": 99.8, "mean": [0.40, 0.45, 0.50],
                                                         "std": [0.20, 0.22, 0.25], "in_graph": True})
    model = tmp_path / "run" / "model.onnx"
    model.parent.mkdir()
    torch.manual_seed(0)
    export_onnx(with_prelude(torchvision.models.resnet18(num_classes=4).eval(), meta), meta, model)
    proc = autobuild.spawn(model, wait=False, calibration_dir=write_tiles(tmp_path / "tiles"), threads=2)
    try:
        wait_until(lambda: proc.poll() is not None or bool((st := autobuild.read_status(model)) and st.pending),
                   180, "the build's early record or its end")
        early = autobuild.read_status(model)
        if not early.pending:
            assert early.state == "ready" and early.openvino_bf16_speed, early
            assert autobuild.slower_than_fp32(early.openvino_bf16_speed), early  # the one reason to serve nothing early
            pytest.skip("bf16 runs slower than fp32 on this CPU, so nothing served early (as checked)")
        assert early.state == "ready" and early.engine == "openvino-bf16" and "openvino-int8" in early.pending
        assert not autobuild.slower_than_fp32(early.openvino_bf16_speed) and early.pid == proc.pid
        assert autobuild.token(model).startswith("openvino-bf16@") and autobuild.needed(model)[0] == "wait"
        sel = select(model, batch_size=8)
        assert sel.backend == "openvino-bf16" and sel.engine.precision == "bf16", sel.skipped
        sel.engine.close()
        assert autobuild.summary(model)["state"] == "building"
    finally:
        if proc.poll() is None:
            autobuild.stop_build(proc)
    if autobuild.read_status(model).pending:  # killed before its end, as intended
        assert autobuild.needed(model)[0] == "build" and autobuild.summary(model)["state"] == "interrupted"
        assert select(model, batch_size=8).backend == "openvino-bf16"  # its engine still serves
