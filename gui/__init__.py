"""The desktop dashboard (``nscmonitor gui``): a read-only view of the store.

Qt lives only here; ``state/`` holds the pure logic (tested without Qt) and ``widgets/``
the views. Torch is never imported (import-linter contract): Grad-CAM runs in a
subprocess.
"""

import sys


def _check_bindings() -> None:
    """PySide6 6.12.0 on CPython < 3.12 drops a reference to None/True/False on every void
    Qt call (1000 ``QPainter.setPen`` calls lower None's count by about 1000); after some
    repaints the interpreter aborts in ``none_dealloc``. Refuse that combination with a
    clear message instead of crashing a window that was meant to run for days."""
    if sys.version_info >= (3, 12):
        return
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("PySide6-Essentials", "PySide6"):
        try:
            v = version(dist)
        except PackageNotFoundError:
            continue
        if v == "6.12.0":
            raise ImportError(f"{dist} 6.12.0 crashes on Python {sys.version_info.major}.{sys.version_info.minor}; "
                              f"install another release: pip install \"{dist}!=6.12.0\"")


_check_bindings()
