"""The peak kernels the ingest benchmark divides by (AMX tiles, and AVX2 on CPUs without
AVX-512) build, measure and are read as its int8 bound.

Each runs only where the CPU has its units and gcc is present; elsewhere the kernel refuses with
a reason, which is checked instead."""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _has(*flags: str) -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return all(f" {f}" in text for f in flags)


def _ingest():
    spec = importlib.util.spec_from_file_location("bench_ingest", ROOT / "benchmarks" / "ingest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_one_core(script: str, flags: tuple[str, ...], refusal: str, tmp_path: Path) -> tuple[str, float]:
    """The kernel's output on one core and the int8 bound the ingest benchmark reads from it."""
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / script)], capture_output=True, text=True,
                         timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    if not _has(*flags):
        assert run.returncode == 2 and refusal in run.stderr
        pytest.skip(f"this CPU has no {' / '.join(flags)}: the kernel refused with its reason, as checked")
    assert run.returncode == 0, run.stderr
    (tmp_path / "peak.txt").write_text(run.stdout)
    gops, source = _ingest().int8_peak_gops(argparse.Namespace(int8_peak_gops=None, cpu_peak=str(tmp_path / "peak.txt")))
    assert source.endswith("peak.txt")
    return run.stdout, gops


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc to build the kernel")
def test_amx_peak_is_the_ingest_benchmarks_int8_bound(tmp_path):
    out, gops = _run_one_core("amx_peak.sh", ("amx_int8", "amx_bf16"), "no AMX", tmp_path)
    # one core's tile unit: 1,024 int8 multiply-adds per cycle, so between 0.5 and 6 GHz of it
    assert 1000 < gops < 12500, out
    bf16 = float(out.split("bf16 amx:")[1].split()[0])
    assert 0.3 < bf16 / gops < 0.7, out  # half the int8 rate: 512 bf16 multiply-adds per cycle


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc to build the kernel")
def test_avx2_peak_is_the_ingest_benchmarks_int8_bound(tmp_path):
    out, gops = _run_one_core("avx2_peak.sh", ("avx2", "fma"), "no AVX2", tmp_path)
    fp32 = float(out.split("fp32 avx2 fma:")[1].split()[0])
    # one core: two 8-wide FMA units are 32 FLOP per cycle, so between 0.5 and 6 GHz of them
    assert 16 < fp32 < 200, out
    # u8 x s8 through vpmaddubsw + vpmaddwd: about twice fp32's rate on one core (64 ops per cycle
    # where both multiply ports take them), never less than fp32's nor above four times it
    assert 1.0 < gops / fp32 < 4.0, out
