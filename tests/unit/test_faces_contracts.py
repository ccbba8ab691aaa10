"""The faces' import rules, checked on full module names anywhere in a file (function-level
imports included): the dashboard reads through the store and ``ops``, never through the daemon
or the command line; its ``state`` package is Qt-free so the presenter is tested without a
window; installers and ``ops`` never reach back into the command line that calls them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def imports_of(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def offenders(pattern: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    files = sorted(REPO.glob(pattern))
    assert files, pattern
    found = {str(p.relative_to(REPO)): sorted(m for m in imports_of(p)
                                             if any(m == f or m.startswith(f + ".") for f in forbidden))
             for p in files}
    return {k: v for k, v in found.items() if v}


@pytest.mark.parametrize("pattern, forbidden", [
    ("gui/**/*.py", ("nscmonitor.daemon", "nscmonitor.cli")),
    ("gui/state/*.py", ("PySide6", "pyqtgraph", "nscmonitor.gui.widgets", "nscmonitor.gui.main_window")),
    # the frozen folder's entry script (installer/pyinstaller/entry.py) is the command line's caller
    ("installer/*.py", ("nscmonitor.cli",)),
    ("nscmonitor/ops/*.py", ("nscmonitor.cli",)),
])
def test_faces_import_rules(pattern: str, forbidden: tuple[str, ...]) -> None:
    assert offenders(pattern, forbidden) == {}


def test_the_rule_sees_a_function_level_import(tmp_path: Path) -> None:
    """The check itself: an import inside a function counts, by its full name."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from nscmonitor.daemon import build_runner\n", encoding="utf-8")
    assert "nscmonitor.daemon.build_runner" in imports_of(f)
