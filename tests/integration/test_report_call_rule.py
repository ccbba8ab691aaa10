"""The report calls wells with the call rule the serving model carries (chosen on its
validation wells, read from its registered metadata), and says which rule that is; a model
without one gets the default rule, said as such; a model the daemon served from a file, not
the registry, is read from what the daemon kept in the store (the report, ``models list`` and
``models show``). Real parts: a tiny ONNX model with the rule written into its metadata, the
registry, the daemon's runner on real TIFFs, a SQLite store, the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from call_rule_store import STRICT, build_store


@pytest.fixture(scope="module")
def strict_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return build_store(tmp_path_factory.mktemp("strict"), STRICT)


def _repo(url: str):
    from nscmonitor.store.db import open_readonly
    from nscmonitor.store.reads import Repo

    return Repo(open_readonly(url))


def _called(page: str) -> dict[str, str]:
    """Well -> the calls table's call cell."""
    table = page[page.index('<table class="calls">'):]
    table = table[:table.index("</table>")]
    return {m.group(1): re.findall(r"<td[^>]*>(.*?)</td>", m.group(2))[3]
            for m in re.finditer(r'<tr data-plate="[^"]*" data-well="([^"]+)">(.*?)</tr>', table)}


def test_the_report_calls_wells_with_the_models_rule(strict_store: tuple[str, str]) -> None:
    from nscmonitor.core.calibration import CallRule
    from nscmonitor.report.html import build_report, well_calls
    from nscmonitor.report.tables import experiment_grids

    url, version = strict_store
    repo = _repo(url)
    (grid,) = experiment_grids(repo, "E1", version)[2]
    by_default = [c.cls if c else "—" for c in well_calls(grid, CallRule())]
    assert set(by_default) != {"—"}, "premise: the default rule calls some of these wells"

    page, shown = build_report(repo, "E1")
    assert shown == version
    assert set(_called(page).values()) == {"—"}, "none reaches the model's P >= 0.9"
    assert f"P ≥ 0.90 over at least 2 time points (chosen on the validation wells of model {version})" in page

    asked, _ = build_report(repo, "E1", threshold=0.6)  # the --threshold override, persistence kept
    assert list(_called(asked).values()) == by_default
    assert "threshold asked for" in asked


def test_a_model_without_a_rule_gets_the_default_said_as_such(tmp_path: Path) -> None:
    from nscmonitor.core.calibration import CallRule
    from nscmonitor.report.html import build_report, well_calls
    from nscmonitor.report.tables import experiment_grids

    url, version = build_store(tmp_path, None)
    repo = _repo(url)
    page, _ = build_report(repo, "E1")
    assert f"P ≥ 0.60 over at least 2 time points (default rule: model {version} carries none)" in page
    (grid,) = experiment_grids(repo, "E1", version)[2]
    assert list(_called(page).values()) == [c.cls if c else "—" for c in well_calls(grid, CallRule())]


def test_rule_in_use_reads_the_metadata_and_falls_back_with_the_reason() -> None:
    from nscmonitor.core.calibration import CallRule
    from nscmonitor.report.calls import rule_in_use

    chosen = rule_in_use({"extra": {"call_rule": {"threshold": 0.75, "min_points": 3}}}, "v7")
    assert chosen.rule == CallRule(0.75, 3) and chosen.from_model
    assert "over at least 3 time points (chosen on the validation wells of model v7)" in chosen.text()
    for meta, version, why in [(None, None, "no model"), (None, "v7", "not in the registry"),
                               ({"extra": {}}, "v7", "carries none"),
                               ({"extra": {"call_rule": {"threshold": 2.0, "min_points": 1}}}, "v7", "threshold in")]:
        got = rule_in_use(meta, version)
        assert got.rule == CallRule() and not got.from_model and why in got.source


def test_a_model_served_from_a_file_is_read_from_the_store_as_a_registered_one_is(tmp_path: Path) -> None:
    """``nscmonitor run --model FILE``: the daemon keeps the file's metadata in the store the
    first time it serves it, so the report calls wells with the rule the file carries and names
    where it was served from, with no access to the file (it is deleted here) and no registry."""
    from nscmonitor.report.html import build_report
    from nscmonitor.store.db import open_engine
    from nscmonitor.store.registry import model_versions, note_served, served_file, version_meta

    url, version = build_store(tmp_path, STRICT, registered=False)
    (tmp_path / "run" / "model.onnx").unlink()
    repo = _repo(url)
    assert model_versions(repo.engine) == []
    kept = served_file(repo.engine, version)
    assert kept is not None and kept.path.endswith("model.onnx") and len(kept.sha256) == 64
    assert version_meta(repo.engine, version)["extra"]["call_rule"] == STRICT
    page, shown = build_report(repo, "E1")
    assert shown == version
    assert set(_called(page).values()) == {"—"}, "none reaches the model's P >= 0.9"
    assert f"(chosen on the validation wells of model {version})" in page
    assert "served from a file, not registered" in page and kept.path in page
    writable = open_engine(url)
    try:
        assert not note_served(writable, version, path="elsewhere.onnx", sha256="0" * 64, meta={})
        assert served_file(writable, version).path == kept.path  # the first one kept
    finally:
        writable.dispose()


def test_models_list_and_show_include_a_file_the_daemon_served(tmp_path: Path, capsys) -> None:
    import json

    from nscmonitor.cli import main

    url, version = build_store(tmp_path, STRICT, registered=False)
    assert main(["models", "--db", url, "list", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["version"], row["state"]) == (version, "served from a file")
    assert main(["models", "--db", url, "list"]) == 0
    out = capsys.readouterr().out
    assert "no model versions registered" in out and version in out
    assert main(["models", "--db", url, "show", version]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "served from a file" and shown["path"] == str(tmp_path / "run" / "model.onnx")
    assert shown["engine"]["state"] and shown["ood"]["available"] is False
    assert main(["models", "--db", url, "show", "v-unknown"]) != 0


@pytest.mark.parametrize("damaged", ['[1, 2]', '"a string"', '{"extra": {"call_rule": {"threshold": "high"}}}'])
def test_a_damaged_served_model_row_falls_back_to_the_default_rule_and_breaks_nothing(
        tmp_path: Path, capsys, damaged: str) -> None:
    """A served_models row whose metadata is not what the daemon wrote (edited by hand, another
    program): the report, the dashboard's overview and ``models list`` still work, and the
    wells are called with the default rule, saying why."""
    import json

    from sqlalchemy import text

    from nscmonitor.cli import main
    from nscmonitor.gui.state.presenter import call_rule_for, read_overview
    from nscmonitor.report.html import build_report
    from nscmonitor.store.db import open_engine
    from nscmonitor.store.registry import served_files, version_meta

    url, version = build_store(tmp_path, STRICT, registered=False)
    writable = open_engine(url)
    with writable.begin() as c:
        c.execute(text("UPDATE served_models SET meta = :m"), {"m": damaged})
    writable.dispose()
    repo = _repo(url)
    meta = version_meta(repo.engine, version)
    rule = call_rule_for(repo.engine, version)
    assert not rule.from_model and "default rule" in rule.source
    assert meta is None or isinstance(meta, dict)
    page, shown = build_report(repo, "E1")
    assert shown == version and "default rule" in page
    (row,) = served_files(repo.engine)
    assert row.version == version and isinstance(row.meta, dict)
    assert [v.version for v in read_overview(repo.engine).served] == [version]
    assert main(["models", "--db", url, "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["version"] == version
