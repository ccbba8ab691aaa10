"""Which channel a watch folder scores: the rule intake applies to each new image, and the
store applies again to the images it holds when a folder's ``channel`` setting changes.
Pure functions of the setting and the channel an image's name gives."""

from __future__ import annotations

#: how every channel skip reason starts (``channel_skip``); the store tells these skips from
#: others by it when a folder's channel setting changes
CHANNEL_SKIP_PREFIX = "channel "


def channel_skip(setting: str | None, channel: str | None) -> str | None:
    """Why an image of ``channel`` (as its name gives it) is not scored under the folder's
    ``channel`` setting, or None when it is scored (no setting, or a name without a channel)."""
    if setting is None or channel is None or norm_channel(channel) == norm_channel(setting):
        return None
    return f"{CHANNEL_SKIP_PREFIX}{channel} is not the scored channel ({setting})"


def norm_channel(ch: str) -> str:
    """``"02"`` and ``"2"`` name the same channel number; names compare case-blind."""
    return str(int(ch)) if ch.isdigit() else ch.strip().lower()
