"""The machine an engine's gate certifies: two hosts whose CPUs share a vendor name but not an
instruction set must not share a built engine (the int8 kernels, and so the gated numbers and
the timed speeds, differ between them)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from nscmonitor.engines import autobuild_status
from nscmonitor.engines.ort import ISA_FLAGS, cpu_id, isa_flags

#: /proc/cpuinfo lines as two cloud VMs showed them, both named only "AMD EPYC"
ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 avx f16c avx2 bmi2 sha_ni vaes
"""
ZEN4 = ZEN3.replace("vaes", "vaes avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni avx512vbmi")
ARM = """processor\t: 0
Features\t: fp asimd evtstrm aes crc32 atomics asimddp sve i8mm bf16
"""


def test_the_instruction_sets_tell_apart_cpus_that_share_a_name() -> None:
    assert isa_flags(ZEN3) == ("avx2", "fma")
    assert isa_flags(ZEN4) == ("avx2", "avx512_bf16", "avx512_vnni", "avx512bw", "avx512f", "fma")
    assert isa_flags(ARM) == ("asimd", "asimddp", "i8mm", "sve")
    assert set(isa_flags(ZEN4)) <= set(ISA_FLAGS)


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="no /proc/cpuinfo on this OS (numpy's detection is used)")
def test_this_machine_s_identity_names_its_instruction_sets() -> None:
    own = isa_flags()
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.split(":", 1)[0].strip() in ("flags", "Features"):
            flags = set(line.split(":", 1)[1].split())
            break
    assert set(own) == flags & set(ISA_FLAGS)
    if own:
        assert cpu_id().endswith(f"[{' '.join(own)}]")
        assert cpu_id() in autobuild_status.machine_id()


def test_without_proc_cpuinfo_numpy_s_detection_answers() -> None:
    """Windows and macOS have no /proc/cpuinfo; numpy detects the same features at import (it
    knows no AVX-VNNI, AMX or i8mm: those hosts are told apart by the rest)."""
    from numpy._core._multiarray_umath import __cpu_features__ as features

    flags = isa_flags("")
    assert set(flags) <= set(ISA_FLAGS)
    assert ("avx2" in flags) == bool(features.get("AVX2")) and ("asimd" in flags) == bool(features.get("ASIMD"))
    if Path("/proc/cpuinfo").is_file():
        assert set(flags) - {"avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "i8mm"} \
            == set(isa_flags()) - {"avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "i8mm"}
