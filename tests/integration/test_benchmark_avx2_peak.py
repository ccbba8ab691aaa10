"""The AVX2 peak kernel builds, measures and is read by the ingest benchmark as its int8 bound.

Runs only where the CPU has AVX2 with FMA and gcc is present; elsewhere the kernel refuses with
a reason, which is checked instead."""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _has_avx2() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


def _ingest():
    spec = importlib.util.spec_from_file_location("bench_ingest", ROOT / "benchmarks" / "ingest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc to build the kernel")
def test_avx2_peak_is_the_ingest_benchmarks_int8_bound(tmp_path):
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "avx2_peak.sh")], capture_output=True, text=True,
                         timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    if not _has_avx2():
        assert run.returncode == 2 and "no AVX2" in run.stderr
        pytest.skip("this CPU has no AVX2 with FMA: the kernel refused with its reason, as checked")
    assert run.returncode == 0, run.stderr
    (tmp_path / "avx2.txt").write_text(run.stdout)
    gops, source = _ingest().int8_peak_gops(argparse.Namespace(int8_peak_gops=None, cpu_peak=str(tmp_path / "avx2.txt")))
    assert source.endswith("avx2.txt")
    fp32 = float(run.stdout.split("fp32 avx2 fma:")[1].split()[0])
    # one core: two 8-wide FMA units are 32 FLOP per cycle, so between 0.5 and 6 GHz of them
    assert 16 < fp32 < 200, run.stdout
    # u8 x s8 through vpmaddubsw + vpmaddwd: about twice fp32's rate on one core (64 ops per cycle
    # where both multiply ports take them), never less than fp32's nor above four times it
    assert 1.0 < gops / fp32 < 4.0, run.stdout
