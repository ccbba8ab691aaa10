"""Before Qt starts on a Linux desktop: are the system libraries its X11 (xcb) platform plugin
needs installed? Without them Qt aborts the process with 'Could not load the Qt platform
plugin "xcb"' and a hint only a Qt developer can act on; a stock Debian lacks
``libxcb-cursor0`` among others. Here they are found first and named as the Debian/Ubuntu
packages to install. No Qt import: this runs before Qt is loaded.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

# soname -> Debian/Ubuntu package (docs/install.md lists the same).
XCB_PACKAGES = {
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-xinerama.so.0": "libxcb-xinerama0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb.so.1": "libxcb1",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libX11.so.6": "libx11-6",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libOpenGL.so.0": "libopengl0",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libdbus-1.so.3": "libdbus-1-3",
    "libglib-2.0.so.0": "libglib2.0-0",
}
_NOT_FOUND = re.compile(r"^\s*(\S+)\s+=>\s+not found", re.MULTILINE)


def uses_xcb(env: dict[str, str] | os._Environ = os.environ, platform: str = sys.platform) -> bool:
    """Qt picks xcb on Linux unless QT_QPA_PLATFORM names something else (offscreen, wayland)."""
    if not platform.startswith("linux"):
        return False
    qpa = env.get("QT_QPA_PLATFORM", "").strip()
    return not qpa or "xcb" in qpa.split(";")[0]


def not_found(ldd_output: str) -> list[str]:
    """Sonames ldd could not resolve, in order, without repeats."""
    out: list[str] = []
    for name in _NOT_FOUND.findall(ldd_output):
        if name not in out:
            out.append(name)
    return out


def packages_for(sonames: list[str]) -> list[str]:
    out: list[str] = []
    for s in sonames:
        pkg = XCB_PACKAGES.get(s, f"the package that provides {s}")
        if pkg not in out:
            out.append(pkg)
    return out


def xcb_plugin() -> Path | None:
    spec = importlib.util.find_spec("PySide6")
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        for rel in ("Qt/plugins/platforms/libqxcb.so", "plugins/platforms/libqxcb.so"):
            p = Path(base) / rel
            if p.is_file():
                return p
    return None


def missing_sonames() -> list[str]:
    """What the xcb plugin cannot load: ldd on the plugin itself (every library it pulls in,
    transitively); where ldd or the plugin is absent, each known library is tried with dlopen."""
    plugin = xcb_plugin()
    ldd = shutil.which("ldd")
    if plugin is not None and ldd is not None:
        try:
            r = subprocess.run([ldd, str(plugin)], capture_output=True, text=True, timeout=30, check=False)
            return not_found(r.stdout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.debug("ldd on %s failed: %s", plugin, exc)
    missing = []
    for soname in XCB_PACKAGES:
        if not _loadable(soname):
            missing.append(soname)
    return missing


def _loadable(soname: str) -> bool:
    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def missing_message(sonames: list[str]) -> str:
    pkgs = packages_for(sonames)
    return (f"the dashboard cannot start on this desktop: Qt's X11 (xcb) platform plugin needs system libraries "
            f"that are not installed ({', '.join(sonames)}). Install them with: sudo apt-get install {' '.join(pkgs)} "
            f"(Debian/Ubuntu; see docs/install.md), or run with QT_QPA_PLATFORM=wayland on a Wayland session")


def check_qt_platform(env: dict[str, str] | os._Environ = os.environ, platform: str = sys.platform) -> str | None:
    """The one-line error to show instead of Qt's abort, or None when Qt can start."""
    if not uses_xcb(env, platform):
        return None
    missing = missing_sonames()
    return missing_message(missing) if missing else None
