"""Every package folder must be declared in pyproject (the list is explicit so the installed
namespace stays clean); a folder that is forgotten would silently vanish from the wheel."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_declared() -> None:
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(cfg["packages"])
    mapping = cfg["package-dir"]
    roots = {"nscmonitor": REPO / "nscmonitor", **{k: REPO / v for k, v in mapping.items()}}
    found = set()
    for prefix, root in roots.items():
        for init in root.rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(root).parts
            found.add(".".join((prefix, *rel)))
    missing = found - declared
    assert not missing, f"package folders not declared in pyproject.toml: {sorted(missing)}"
    stale = {p for p in declared if p not in found}
    assert not stale, f"declared packages without an __init__.py: {sorted(stale)}"


def test_migrations_ship_with_the_package() -> None:
    from nscmonitor.store.schema import MIGRATIONS

    assert (MIGRATIONS / "env.py").is_file()
    assert list((MIGRATIONS / "versions").glob("0001_*.py"))
