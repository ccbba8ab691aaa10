"""The AMX peak kernel builds, measures and is read by the ingest benchmark as its int8 bound.

Runs only where the CPU has AMX and gcc is present; elsewhere the kernel refuses with a reason,
which is checked instead."""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _has_amx() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_int8" in flags and " amx_bf16" in flags


def _ingest():
    spec = importlib.util.spec_from_file_location("bench_ingest", ROOT / "benchmarks" / "ingest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc to build the kernel")
def test_amx_peak_is_the_ingest_benchmarks_int8_bound(tmp_path):
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "amx_peak.sh")], capture_output=True, text=True,
                         timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    if not _has_amx():
        assert run.returncode == 2 and "no AMX" in run.stderr
        pytest.skip("this CPU has no AMX: the kernel refused with its reason, as checked")
    assert run.returncode == 0, run.stderr
    (tmp_path / "amx.txt").write_text(run.stdout)
    gops, source = _ingest().int8_peak_gops(argparse.Namespace(int8_peak_gops=None, cpu_peak=str(tmp_path / "amx.txt")))
    assert source.endswith("amx.txt")
    # one core's tile unit: 1,024 int8 multiply-adds per cycle, so between 0.5 and 6 GHz of it
    assert 1000 < gops < 12500, run.stdout
    bf16 = float(run.stdout.split("bf16 amx:")[1].split()[0])
    assert 0.3 < bf16 / gops < 0.7, run.stdout  # half the int8 rate: 512 bf16 multiply-adds per cycle
