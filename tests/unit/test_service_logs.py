"""Rotating log files: a daemon left for weeks must not fill the instrument PC's disk."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from nscmonitor.core.logs import LOG_FILE, setup_logging


@pytest.fixture()
def restore_root_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


def test_log_file_rotates_at_the_size_cap_and_keeps_n_backups(tmp_path: Path, restore_root_logging) -> None:
    path = setup_logging(tmp_path / "logs", 0, console=False, max_bytes=2000, backups=3)
    assert path == tmp_path / "logs" / LOG_FILE
    log = logging.getLogger("nscmonitor.test")
    for i in range(200):
        log.info("image %04d scored with a message long enough to fill the file quickly", i)
    files = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert files == [LOG_FILE, f"{LOG_FILE}.1", f"{LOG_FILE}.2", f"{LOG_FILE}.3"]
    assert all(p.stat().st_size <= 2000 for p in (tmp_path / "logs").iterdir())
    assert "image 0199" in path.read_text(encoding="utf-8")


def test_file_keeps_info_even_when_the_console_is_quiet(tmp_path: Path, restore_root_logging,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = setup_logging(tmp_path, 0, console=True)
    logging.getLogger("nscmonitor.x").info("engine ort-cpu serving")
    text = path.read_text(encoding="utf-8")
    assert "INFO" in text and "engine ort-cpu serving" in text
    assert "engine ort-cpu serving" not in capsys.readouterr().err


def test_calling_twice_does_not_duplicate_lines(tmp_path: Path, restore_root_logging) -> None:
    setup_logging(tmp_path, 1, console=False)
    path = setup_logging(tmp_path, 1, console=False)
    logging.getLogger("nscmonitor.x").warning("once")
    assert path.read_text(encoding="utf-8").count("once") == 1


def test_unwritable_log_dir_falls_back_to_the_console(tmp_path: Path, restore_root_logging,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert setup_logging(blocker / "logs", 0, console=True) is None
    assert "cannot write the log file" in capsys.readouterr().err
