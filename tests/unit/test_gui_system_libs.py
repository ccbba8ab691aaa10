"""`nscmonitor gui` on a Linux desktop without the xcb plugin's system libraries: the missing
ones are found before Qt aborts and named as the Debian/Ubuntu packages to install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nscmonitor.gui.system_libs import (XCB_PACKAGES, missing_sonames, not_found, packages_for, uses_xcb,
                                        xcb_plugin)

LDD = """\tlinux-vdso.so.1 (0x00007ffd6b5f2000)
\tlibQt6XcbQpa.so.6 => /venv/PySide6/Qt/lib/libQt6XcbQpa.so.6 (0x00007f3a1c000000)
\tlibxcb-cursor.so.0 => not found
\tlibxcb-icccm.so.4 => not found
\tlibxcb.so.1 => /lib/x86_64-linux-gnu/libxcb.so.1 (0x00007f3a1bfd0000)
\tlibxcb-cursor.so.0 => not found
\tlibfoo-unknown.so.3 => not found
"""


def test_ldd_output_to_packages() -> None:
    names = not_found(LDD)
    assert names == ["libxcb-cursor.so.0", "libxcb-icccm.so.4", "libfoo-unknown.so.3"]
    assert packages_for(names) == ["libxcb-cursor0", "libxcb-icccm4", "the package that provides libfoo-unknown.so.3"]


def test_only_the_xcb_platform_is_checked() -> None:
    assert uses_xcb({}, "linux")
    assert uses_xcb({"QT_QPA_PLATFORM": "xcb"}, "linux")
    assert not uses_xcb({"QT_QPA_PLATFORM": "offscreen"}, "linux")
    assert not uses_xcb({"QT_QPA_PLATFORM": "wayland;xcb"}, "linux")
    assert not uses_xcb({}, "win32") and not uses_xcb({}, "darwin")


def test_install_doc_lists_every_package() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "install.md").read_text(encoding="utf-8")
    for pkg in set(XCB_PACKAGES.values()):
        assert pkg in doc, pkg


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the xcb plugin exists on Linux only")
def test_gui_names_this_machines_missing_libraries(tmp_path: Path) -> None:
    plugin = xcb_plugin()
    if plugin is None or shutil.which("ldd") is None:
        pytest.skip("no PySide6 xcb plugin or no ldd here")
    # independent of the module: the dynamic loader's own answer for the real plugin
    out = subprocess.run(["ldd", str(plugin)], capture_output=True, text=True, check=False).stdout
    truth = sorted({line.split()[0] for line in out.splitlines() if "not found" in line})
    assert sorted(missing_sonames()) == truth
    if not truth:
        pytest.skip("this machine has every library the xcb plugin needs (the message is covered above)")
    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
    env["DISPLAY"] = ":99"
    r = subprocess.run([sys.executable, "-m", "nscmonitor", "gui", "--db", f"sqlite:///{tmp_path / 'none.db'}"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "sudo apt-get install" in line
    for soname in truth:
        assert soname in line and XCB_PACKAGES.get(soname, soname) in line
    assert not (tmp_path / "none.db").exists()
