"""An engine build's temporary files live in a folder of its own that the next build removes
when the process that held it is gone, however it ended (real processes killed without
cleanup, real OS locks, the real build command)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from test_engine_autobuild import run_dir_with_calibration

from nscmonitor.engines import autobuild
from nscmonitor.engines.build_scratch import OWNER, PREFIX, UNLOCKED_GRACE_S, scratch, sweep

# a build process that dies inside its folder without any cleanup (as SIGKILL or a crash would)
DIES = """
import os, sys
from nscmonitor.engines.build_scratch import scratch
cm = scratch(sys.argv[1])
folder = cm.__enter__()
import tempfile
work = tempfile.mkdtemp(prefix="nscm-quant-")
open(os.path.join(work, "pre.onnx"), "wb").write(b"x" * 1_000_000)
print(folder, flush=True)
os._exit(0)
"""
# a build process that is still running in its folder
RUNS = """
import sys
from nscmonitor.engines.build_scratch import scratch
with scratch(sys.argv[1]) as folder:
    print(folder, flush=True)
    sys.stdin.readline()
"""


def builds(parent: Path) -> set[str]:
    return {p.name for p in parent.glob(PREFIX + "*")}


def test_a_sweep_removes_the_folders_of_dead_builds_only(tmp_path: Path) -> None:
    running = subprocess.Popen([sys.executable, "-c", RUNS, str(tmp_path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        live = Path(running.stdout.readline().strip())
        # (each build sweeps as it starts, so the dead one comes after the running one)
        dead = Path(subprocess.run([sys.executable, "-c", DIES, str(tmp_path)], capture_output=True, text=True,
                                   check=True).stdout.strip())
        assert (dead / OWNER).is_file() and any(dead.glob("nscm-quant-*/pre.onnx"))  # left behind
        young = tmp_path / f"{PREFIX}young"  # being created right now: no lock file yet
        young.mkdir()
        old = tmp_path / f"{PREFIX}old"  # its build died before it could lock it, long ago
        old.mkdir()
        past = time.time() - UNLOCKED_GRACE_S - 60
        os.utime(old, (past, past))
        other = tmp_path / "nscm-quant-unrelated"  # not a build folder: never touched
        other.mkdir()
        removed = sweep(tmp_path)
        assert {p.name for p, _ in removed} == {dead.name, old.name}
        assert dict((p.name, size) for p, size in removed)[dead.name] >= 1_000_000
        assert builds(tmp_path) == {live.name, young.name} and other.is_dir()
        assert live.is_dir() and (live / OWNER).is_file()
    finally:
        running.communicate("\n", timeout=30)
    assert running.returncode == 0 and not live.exists()  # ended normally: it removed its own


def test_scratch_holds_this_process_temporary_files_and_gives_everything_back(tmp_path: Path) -> None:
    before_env = {k: os.environ.get(k) for k in ("TMPDIR", "TEMP", "TMP")}
    before_dir = tempfile.tempdir
    with pytest.raises(RuntimeError, match="the build failed"):
        with scratch(tmp_path) as folder:
            assert Path(tempfile.gettempdir()) == folder and os.environ["TMPDIR"] == str(folder)
            with tempfile.NamedTemporaryFile(delete=False) as fh:
                fh.write(b"partial model")
            assert Path(fh.name).parent == folder
            out = subprocess.run([sys.executable, "-c", "import tempfile; print(tempfile.gettempdir())"],
                                 capture_output=True, text=True, check=True).stdout.strip()
            assert Path(out) == folder  # child processes and native libraries see it through the environment
            raise RuntimeError("the build failed")
    assert not folder.exists() and builds(tmp_path) == set()
    assert tempfile.tempdir == before_dir and {k: os.environ.get(k) for k in before_env} == before_env


def test_the_build_command_removes_what_a_killed_build_left_and_leaves_nothing_of_its_own(tmp_path: Path) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    dead = Path(subprocess.run([sys.executable, "-c", DIES, str(temp)], capture_output=True, text=True,
                               check=True).stdout.strip())
    model = run_dir_with_calibration(tmp_path) / "model.onnx"
    env = {**os.environ, "TMPDIR": str(temp), "TEMP": str(temp), "TMP": str(temp),
           "NSCMONITOR_DISABLE_OPENVINO": "1"}  # one target is enough here: the test is about its folders
    done = subprocess.run(autobuild.build_command(model, threads=1), env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert autobuild.read_status(model).state == "ready"
    assert not dead.exists() and builds(temp) == set()


def test_a_temporary_folder_that_cannot_hold_one_leaves_the_build_to_run_as_before(tmp_path: Path, caplog) -> None:
    """Where no private folder can be made (here the temporary folder is a file, as a gone or
    read-only one refuses it too), the block still runs, unredirected, and says why: the build
    then meets the trouble itself and records it, rather than the build command failing first."""
    not_a_folder = tmp_path / "temp"
    not_a_folder.write_text("a file")
    before = tempfile.tempdir
    with scratch(not_a_folder) as folder:
        assert folder is None and tempfile.tempdir == before
    assert "cannot make the engine build's temporary folder" in caplog.text
