"""The folder settings that decide which images are scored: one pure rule for intake and for
the store's re-application when a setting changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from nscmonitor.config import load_settings
from nscmonitor.core.errors import ConfigError
from nscmonitor.core.selection import is_selection_skip, norm_z, skip_reason, z_skip


@pytest.mark.parametrize("setting,z,scored", [
    ("all", None, True), ("all", 3, True),
    ("projection", None, True), ("projection", 1, False),
    ("2", 2, True), ("2", 3, False), ("2", None, False), ("0", 0, True),
])
def test_z_rule(setting: str, z, scored: bool) -> None:
    reason = z_skip(setting, z)
    assert (reason is None) == scored
    if reason is not None:
        assert is_selection_skip(reason) and reason.startswith("z plane ")


def test_the_channel_is_judged_first_and_a_link_s_skip_is_not_the_rule_s() -> None:
    assert skip_reason("1", "2", "2", 5) == "channel 2 is not the scored channel (1)"
    assert skip_reason("1", "2", "1", 5) == "z plane 5 is not the scored plane (2)"
    assert skip_reason(None, "all", "7", 9) is None
    assert not is_selection_skip("symbolic link: not followed") and not is_selection_skip(None)


@pytest.mark.parametrize("value,stored", [("all", "all"), ("Projection", "projection"), (3, "3"), ("03", "3"),
                                          (0, "0")])
def test_z_settings_are_stored_one_way(value, stored: str) -> None:
    assert norm_z(value) == stored


@pytest.mark.parametrize("bad", ["best", -1, True, 1.5, "", "3a"])
def test_a_bad_z_setting_is_one_line_naming_the_key(tmp_path: Path, bad) -> None:
    cfg = tmp_path / "c.toml"
    value = f'"{bad}"' if isinstance(bad, str) else str(bad).lower()
    cfg.write_text(f'[[watch]]\npath = "{tmp_path.as_posix()}"\nz = {value}\n')
    with pytest.raises(ConfigError, match=r"watch\[0\]\.z: must be \"all\", \"projection\" or a plane number"):
        load_settings(cfg)


def test_z_defaults_to_every_plane(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[watch]]\npath = "{tmp_path.as_posix()}"\n')
    assert load_settings(cfg).watch[0].z == "all"
    cfg.write_text(f'[[watch]]\npath = "{tmp_path.as_posix()}"\nz = "projection"\n')
    assert load_settings(cfg).watch[0].z == "projection"


def test_a_channel_token_of_digit_like_characters_is_a_name_not_a_crash() -> None:
    """``str.isdigit`` is true for superscripts, which ``int`` refuses: a profile whose channel
    token takes any characters must not make intake (or a start) raise on such a name."""
    assert skip_reason("2", "all", "²", None) == "channel ² is not the scored channel (2)"
    assert skip_reason("02", "all", "٢", None) is None  # an Arabic-Indic two is a decimal two
    with pytest.raises(ValueError, match="must be"):
        norm_z("²")
