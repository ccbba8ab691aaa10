"""The faces' own import rules, beside the layer rules of ``test_import_contracts.py`` (whose
reader of full import names this uses): the dashboard's ``state`` package is Qt-free, so its
presenter and actions are tested without a window; the installers never reach back into the
command line that calls them (the frozen folder's entry script, ``installer/pyinstaller/``, is
that command line's caller and is left out)."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_import_contracts import QT, REPO, hits, imported_modules, imports_of


def installer_imports(path: Path) -> set[str]:
    """``installer/`` is installed as ``nscmonitor.installer``."""
    return imports_of(path.read_text(encoding="utf-8"), f"nscmonitor.installer.{path.stem}", path.stem == "__init__")


@pytest.mark.parametrize("pattern, forbidden, read", [
    ("gui/state/*.py", QT | {"nscmonitor.gui.widgets", "nscmonitor.gui.main_window"}, imported_modules),
    ("installer/*.py", {"nscmonitor.cli"}, installer_imports),
])
def test_faces_import_rules(pattern: str, forbidden: set[str], read) -> None:  # read: path -> module names
    files = sorted(REPO.glob(pattern))
    assert files, pattern
    bad = {str(p.relative_to(REPO)): hits(read(p), forbidden) for p in files}
    assert not {k: v for k, v in bad.items() if v}
