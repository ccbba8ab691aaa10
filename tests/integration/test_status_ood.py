"""``nscmonitor status`` warns when most of the newest scored images are flagged as unlike the
model's training data (a folder of another channel, objective or culture): a real daemon on a
tiny ONNX model with an ``ood`` output, a real store (SQLite and PostgreSQL), the real CLI."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from conftest import cells_image, stable_seed, stripes_image, tiny_model_flagging_stripes, write_tiff
from nscmonitor.cli import main
from nscmonitor.ops.health import OOD_MIN_IMAGES, OOD_WARN_SHARE, ood_share_warning


@pytest.mark.parametrize("threshold,warned", [(0.0, True), (1e9, False), (None, False)])
def test_status_warns_when_the_newest_images_are_unlike_the_training_data(
        tmp_path: Path, make_runner, db_url: str, capsys: pytest.CaptureFixture[str], threshold: float,
        warned: bool) -> None:
    from nscmonitor.engines.tiny import build_tiny_classifier

    model = tmp_path / "models" / "ood.onnx"
    build_tiny_classifier(model, input_size=32, ood_threshold=threshold)
    watch = tmp_path / "watch"
    n = OOD_MIN_IMAGES + 4
    for i in range(n):
        well = f"{'ABCD'[i % 4]}{i // 4 + 1}"
        write_tiff(watch / f"VID3_{well}_1_00d00h00m.tif", cells_image(stable_seed("status-ood", i), (64, 64)))
    runner = make_runner(watch, model=model, db_url=db_url)
    runner.run(once=True)
    main(["status", "--db", db_url, "--json"])
    report = json.loads(capsys.readouterr().out)
    judged = 0 if threshold is None else n  # a model without the score flags nothing and is not judged
    assert report["unlike_training_data"] == {"flagged": n if warned else 0, "of_newest_scored": judged}
    hits = [w for w in report["warnings"] if "unlike the model's training data" in w]
    assert hits == ([f"{n} of the newest {n} scored images (100%) are unlike the model's training data "
                     "(out-of-distribution flag): is a folder another channel, objective, modality or culture than "
                     "the model was trained on? Their readouts are marked and left out of calls; 'nscmonitor "
                     "doctor' shows each folder's channel and pixel size"] if warned else [])
    main(["status", "--db", db_url])
    text = capsys.readouterr().out
    assert ("warning: " + hits[0][:40] in text) if warned else "warning: " not in text
    counts = f"unlike the model's training data: {n if warned else 0} of the newest {n} scored images"
    assert (counts in " ".join(text.split())) is (threshold is not None)


def test_the_warning_needs_enough_images_and_a_share_far_above_the_models_own_rate() -> None:
    assert ood_share_warning(OOD_MIN_IMAGES - 1, OOD_MIN_IMAGES - 1) is None  # too few to judge
    judged = 200
    assert ood_share_warning(int(OOD_WARN_SHARE * judged) - 1, judged) is None  # e.g. a bad plate's 10-20 %
    assert ood_share_warning(int(OOD_WARN_SHARE * judged), judged).startswith(f"50 of the newest {judged} ")


def test_the_daemon_tells_the_hook_once_when_images_turn_unlike_and_once_when_they_no_longer_are(
        tmp_path: Path) -> None:
    """A real daemon with a notification hook: frames of stripes (which this tiny model's
    score puts far from frames of cells, threshold between the two measured here) arrive
    first, then frames of cells dilute them below a quarter of the newest 200; the hook hears
    one warning and one all-clear, however many batches and heartbeats pass."""
    import sys

    from nscmonitor.config import parse_settings
    from nscmonitor.daemon import build_runner

    def cells(i: int):
        return cells_image(stable_seed("cells", i), (64, 64))

    model = tiny_model_flagging_stripes(tmp_path / "models" / "ood.onnx")

    received = tmp_path / "hook.jsonl"
    script = tmp_path / "hook.py"
    script.write_text(f"import sys\nopen({str(received)!r}, 'a').write(sys.stdin.read() + '\\n')\n")
    watch = tmp_path / "watch"
    settings = parse_settings({
        "database_url": f"sqlite:///{tmp_path / 'nsc.db'}", "models_dir": str(tmp_path / "models"),
        "log_dir": str(tmp_path / "logs"), "retrain": {"hook": f"{sys.executable} {script}"},
        "watch": [{"path": str(watch), "experiment": "E1", "quiet_seconds": 0.0}]}, env={})
    runner = build_runner(settings, model=model, retry_base_s=0.05, poll_interval=0.2, heartbeat_s=0.05)

    def events() -> list[dict]:
        return [json.loads(line) for line in received.read_text().splitlines()
                if line.strip() and json.loads(line)["kind"].startswith("images_")] if received.exists() else []

    def wait_for(n: int) -> list[dict]:
        deadline = time.monotonic() + 60
        while len(events()) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        return events()

    daemon = threading.Thread(target=runner.run, daemon=True)
    daemon.start()
    try:
        for i in range(24):
            write_tiff(watch / f"VID3_{'ABCDEFGH'[i % 8]}{i // 8 + 1}_1_00d00h00m.tif", stripes_image(i))
        got = wait_for(1)
        assert [e["kind"] for e in got] == ["images_unlike_training"]
        first = got[0]["data"]  # heard at a heartbeat once 20 or more were scored, all of them flagged
        assert got[0]["level"] == "warning" and first["flagged"] == first["of_newest_scored"] >= OOD_MIN_IMAGES
        for i in range(80):
            write_tiff(watch / f"VID3_{'ABCDEFGH'[i % 8]}{i // 8 + 1}_1_01d00h00m.tif", cells(i))
        got = wait_for(2)
        assert [e["kind"] for e in got] == ["images_unlike_training", "images_like_training"]
        assert got[1]["data"]["flagged"] == 24 and 4 * 24 < got[1]["data"]["of_newest_scored"] <= 104
        time.sleep(1.0)  # many more heartbeats: the hook hears nothing more
        assert len(events()) == 2
    finally:
        runner.stop_event.set()
        daemon.join(30)


@pytest.mark.parametrize("pixel_flag", [[], ["--pixel-size", "1.24"]])
def test_run_says_at_its_start_that_a_folder_states_no_pixel_size_and_at_its_end_what_status_warns(
        tmp_path: Path, pixel_flag: list[str]) -> None:
    """``nscmonitor run --once`` through the real CLI: a model with a pixel size, a folder of
    TIFFs without one (the doctor's advice, printed where every user sees it) unless the
    folder is given one; every image flagged (threshold 0), so the run ends with status's
    warning."""
    import subprocess
    import sys

    from nscmonitor.engines.tiny import build_tiny_classifier

    model = tmp_path / "models" / "px.onnx"
    build_tiny_classifier(model, input_size=32, pixel_size_um=1.24, ood_threshold=0.0)
    watch = tmp_path / "watch"
    for i in range(OOD_MIN_IMAGES):
        write_tiff(watch / f"VID3_{'ABCDEFGH'[i % 8]}{i // 8 + 1}_1_00d00h00m.tif",
                   cells_image(stable_seed("run-px", i), (64, 64)))
    p = subprocess.run([sys.executable, "-m", "nscmonitor", "run", "--db", f"sqlite:///{tmp_path / 'nsc.db'}",
                        "--watch", str(watch), "--model", str(model), "--quiet", "0", "--no-schedule", "--once",
                        *pixel_flag], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    start = [line for line in p.stderr.splitlines() if "states none" in line]
    if pixel_flag:
        assert start == []
    else:
        assert len(start) == 1 and start[0].startswith(f"nscmonitor: WARNING: watch {watch}: ")
        assert "set pixel_size_um for this folder" in start[0]
    end = p.stderr.splitlines()[-1]
    assert end.startswith(f"nscmonitor: WARNING: {OOD_MIN_IMAGES} of the newest {OOD_MIN_IMAGES} scored images")
    # status, given only the database, finds the file the daemon served (kept in the store)
    st = subprocess.run([sys.executable, "-m", "nscmonitor", "status", "--db", f"sqlite:///{tmp_path / 'nsc.db'}",
                         "--json"], capture_output=True, text=True, timeout=120)
    report = json.loads(st.stdout)
    assert report["model_ood"] is not None and report["model_ood"]["available"] is True, report["model_ood"]


def test_a_restarted_daemon_does_not_tell_the_hook_again(tmp_path: Path) -> None:
    """The warning is told once per episode, not once per daemon: a second daemon on the same
    database, with the newest images still unlike the training data, stays quiet."""
    import sys

    from nscmonitor.config import parse_settings
    from nscmonitor.daemon import build_runner

    model = tiny_model_flagging_stripes(tmp_path / "models" / "ood.onnx")
    received = tmp_path / "hook.jsonl"
    script = tmp_path / "hook.py"
    script.write_text(f"import sys\nopen({str(received)!r}, 'a').write(sys.stdin.read() + '\\n')\n")
    watch = tmp_path / "watch"
    for i in range(OOD_MIN_IMAGES):
        write_tiff(watch / f"VID3_{'ABCDEFGH'[i % 8]}{i // 8 + 1}_1_00d00h00m.tif", stripes_image(i))
    settings = parse_settings({
        "database_url": f"sqlite:///{tmp_path / 'nsc.db'}", "models_dir": str(tmp_path / "models"),
        "log_dir": str(tmp_path / "logs"), "retrain": {"hook": f"{sys.executable} {script}"},
        "watch": [{"path": str(watch), "experiment": "E1", "quiet_seconds": 0.0}]}, env={})
    for _ in range(2):
        runner = build_runner(settings, model=model, retry_base_s=0.05, poll_interval=0.2)
        try:
            runner.run(once=True)
        finally:
            runner.stop_event.set()
    kinds = [json.loads(line)["kind"] for line in received.read_text().splitlines() if line.strip()]
    assert [k for k in kinds if k.startswith("images_")] == ["images_unlike_training"]


def test_a_second_daemon_on_the_same_database_does_not_tell_the_hook_again(tmp_path: Path) -> None:
    """Two daemons sharing a database, each with its own folder: the second starts first (its
    folder still empty, nothing to tell), then the first scores a folder unlike the training
    data and tells the hook; the second's next check sees the same newest images, finds the
    episode already told in the event log and stays quiet."""
    import sys

    from nscmonitor.config import parse_settings
    from nscmonitor.daemon import build_runner

    model = tiny_model_flagging_stripes(tmp_path / "models" / "ood.onnx")
    received = tmp_path / "hook.jsonl"
    script = tmp_path / "hook.py"
    script.write_text(f"import sys\nopen({str(received)!r}, 'a').write(sys.stdin.read() + '\\n')\n")
    for i in range(OOD_MIN_IMAGES):
        write_tiff(tmp_path / "one" / f"VID3_{'ABCDEFGH'[i % 8]}{i // 8 + 1}_1_00d00h00m.tif", stripes_image(i))
    (tmp_path / "two").mkdir()
    runners = {}
    for name in ("one", "two"):
        settings = parse_settings({
            "database_url": f"sqlite:///{tmp_path / 'nsc.db'}", "models_dir": str(tmp_path / "models"),
            "log_dir": str(tmp_path / "logs"), "retrain": {"hook": f"{sys.executable} {script}"},
            "watch": [{"path": str(tmp_path / name), "experiment": name, "quiet_seconds": 0.0}]}, env={})
        runners[name] = build_runner(settings, model=model, retry_base_s=0.05, poll_interval=0.2)
    try:
        runners["two"].run(once=True)  # nothing scored yet: nothing to tell
        runners["one"].run(once=True)  # tells the episode
        runners["two"].run(once=True)  # its check at the end of the run: the same episode
    finally:
        for r in runners.values():
            r.stop_event.set()
    kinds = [json.loads(line)["kind"] for line in received.read_text().splitlines() if line.strip()]
    assert [k for k in kinds if k.startswith("images_")] == ["images_unlike_training"]
