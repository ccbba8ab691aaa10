"""``nscmonitor doctor`` names the native-format readers this installation has, with their
versions, and the extra to install for each one that is missing."""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from nscmonitor.cli import main as cli_main

READERS = (("ND2", "nd2", "nd2"), ("CZI", "pylibCZIrw", "czi"), ("OME-Zarr", "zarr", "zarr"))


def _doctor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'database_url = "sqlite:///{(tmp_path / "nsc.db").as_posix()}"\n'
                   f'models_dir = "{(tmp_path / "models").as_posix()}"\nlog_dir = "{(tmp_path / "logs").as_posix()}"\n')
    assert cli_main(["--config", str(cfg), "doctor"]) == 0
    lines = {}
    for line in capsys.readouterr().out.splitlines():
        for fmt, _, _ in READERS:
            if line[4:].startswith(f"{fmt} reader "):
                lines[fmt] = line
    return lines


@pytest.mark.parametrize(("fmt", "module", "extra"), READERS)
def test_doctor_lists_each_reader_with_its_version_or_the_extra(tmp_path: Path, capsys, monkeypatch,
                                                                 fmt: str, module: str, extra: str) -> None:
    pytest.importorskip(module)
    lines = _doctor(tmp_path, capsys)
    assert set(lines) == {f for f, _, _ in READERS}  # one line per format
    assert lines[fmt].startswith("ok ") and lines[fmt].endswith(f"{module} {version(module)}")

    monkeypatch.setitem(sys.modules, module, None)  # the package is not installed (an import then fails)
    lines = _doctor(tmp_path, capsys)
    assert lines[fmt].startswith("-- ")
    assert lines[fmt].endswith(f"not installed: pip install 'nscmonitor[{extra}]'")
    import importlib.util

    for other, mod, _ in READERS:
        if other != fmt and importlib.util.find_spec(mod) is not None:
            assert lines[other].startswith("ok "), lines[other]  # only the missing one is reported missing


def test_doctor_says_which_precisions_openvino_has_on_this_cpu(tmp_path: Path, capsys) -> None:
    """The line a lab manager reads to see why an int8 engine runs some layers in bf16 here."""
    pytest.importorskip("openvino")
    import openvino as ov

    from nscmonitor.engines.openvino import has_bf16

    cfg = tmp_path / "config.toml"
    cfg.write_text(f'database_url = "sqlite:///{(tmp_path / "nsc.db").as_posix()}"\n')
    assert cli_main(["--config", str(cfg), "doctor"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "OpenVINO CPU precisions" in x)
    for cap in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert cap in line
    assert ("non-int8 layers may run bf16" in line) == has_bf16()


def test_doctor_says_where_each_watch_folders_pixel_size_comes_from(tmp_path: Path, capsys) -> None:
    """Real TIFFs: a folder whose files state their pixel size, one whose files state none
    (advice to set ``pixel_size_um``), one that sets it, and one with no image yet."""
    import numpy as np
    import tifffile

    img = np.full((16, 16), 100, np.uint16)
    for name in ("tagged", "plain", "set", "empty"):
        (tmp_path / name / "sub").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "tagged" / "sub" / "A01.tif", img, resolution=(1e4 / 1.24, 1e4 / 1.24),
                     resolutionunit="CENTIMETER")
    tifffile.imwrite(tmp_path / "plain" / "A01.tif", img)
    tifffile.imwrite(tmp_path / "set" / "A01.tif", img)
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'database_url = "sqlite:///{(tmp_path / "nsc.db").as_posix()}"\n'
                   f'models_dir = "{(tmp_path / "models").as_posix()}"\nlog_dir = "{(tmp_path / "logs").as_posix()}"\n'
                   + "".join(f'[[watch]]\npath = "{(tmp_path / n).as_posix()}"\nexperiment = "{n}"\n'
                             + ("pixel_size_um = 2.48\n" if n == "set" else "")
                             for n in ("tagged", "plain", "set", "empty")))
    assert cli_main(["--config", str(cfg), "doctor"]) == 0
    lines = {line[4:].split(" pixel size")[0].removeprefix("watch "): line
             for line in capsys.readouterr().out.splitlines() if " pixel size" in line and "watch " in line}
    assert set(lines) == {"tagged", "plain", "set", "empty"}
    assert "the files state it (A01.tif: 1.24 um/px)" in lines["tagged"]
    assert "A01.tif states none" in lines["plain"] and "set pixel_size_um" in lines["plain"]
    assert "2.48 um/px for files that state none" in lines["set"]
    assert "no image in the folder yet" in lines["empty"]


def test_doctor_says_what_this_cpu_s_instruction_sets_mean_for_the_engines(tmp_path: Path, capsys) -> None:
    """Why an int8 engine runs 1.5-2x fp32 on one PC and many times on another."""
    from nscmonitor.engines.ort import cpu_id, isa_flags
    from nscmonitor.ops.health import cpu_units

    assert "without VNNI" in cpu_units(("avx2", "fma")) and "no bf16 units" in cpu_units(("avx2", "fma"))
    zen4 = cpu_units(("avx2", "avx512_bf16", "avx512_vnni", "avx512bw", "avx512f", "fma"))
    assert "with VNNI" in zen4 and "; bf16 units" in zen4
    assert "AMX" in cpu_units(("avx2", "avx512f", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile"))
    assert "ARM int8" in cpu_units(("asimd", "asimddp")) and "bf16" not in cpu_units(("asimd", "asimddp"))
    assert "not be faster" in cpu_units(())
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'database_url = "sqlite:///{(tmp_path / "nsc.db").as_posix()}"\n')
    assert cli_main(["--config", str(cfg), "doctor"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x[4:].startswith("CPU "))
    assert cpu_id() in line and cpu_units(isa_flags()) in line
