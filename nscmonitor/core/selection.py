"""Which images a watch folder scores: its ``channel`` and ``z`` settings, applied by intake to
each new image and by the store again to the images it holds when a setting changes. Pure
functions of the settings and what an image's name gives.

Why a z rule: an ImageXpress writes each z plane of a stack into its own ``ZStep_N`` folder
and the projection beside them; scored together, a well's readout averages the projection
with every out-of-focus plane.
"""

from __future__ import annotations

#: how every channel skip reason starts (``channel_skip``); the store tells these skips from
#: others by it when a folder's setting changes
CHANNEL_SKIP_PREFIX = "channel "
#: how every z skip reason starts (``z_skip``)
Z_SKIP_PREFIX = "z plane "
#: the ``z`` settings besides a plane number
Z_ALL, Z_PROJECTION = "all", "projection"


def channel_skip(setting: str | None, channel: str | None) -> str | None:
    """Why an image of ``channel`` (as its name gives it) is not scored under the folder's
    ``channel`` setting, or None when it is scored (no setting, or a name without a channel)."""
    if setting is None or channel is None or norm_channel(channel) == norm_channel(setting):
        return None
    return f"{CHANNEL_SKIP_PREFIX}{channel} is not the scored channel ({setting})"


def z_skip(setting: str, z: int | None) -> str | None:
    """Why an image of z plane ``z`` (None: its name gives none, as for a projection or any
    2-D image) is not scored under the folder's ``z`` setting: ``all`` scores every image,
    ``projection`` only those without a z index, a number only that plane."""
    if setting == Z_ALL:
        return None
    if setting == Z_PROJECTION:
        if z is None:
            return None
        return f"{Z_SKIP_PREFIX}{z} is not scored (z = projection: only images without a z index)"
    if z is not None and z == int(setting):
        return None
    shown = "(none: a projection or 2-D image)" if z is None else str(z)
    return f"{Z_SKIP_PREFIX}{shown} is not the scored plane ({setting})"


def skip_reason(channel: str | None, z: str, image_channel: str | None, image_z: int | None) -> str | None:
    """The folder's reason to skip an image, channel first; None when it is scored."""
    return channel_skip(channel, image_channel) or z_skip(z, image_z)


def is_selection_skip(reason: str | None) -> bool:
    """A skip these rules gave (not a symbolic link's, say): one a changed setting may undo."""
    return bool(reason) and reason.startswith((CHANNEL_SKIP_PREFIX, Z_SKIP_PREFIX))


def norm_channel(ch: str) -> str:
    """``"02"`` and ``"2"`` name the same channel number; names compare case-blind."""
    return str(int(ch)) if ch.isdecimal() else ch.strip().lower()


def norm_z(value: object) -> str:
    """A ``z`` setting as stored: ``all``, ``projection`` or a plane number's digits. Raises
    ValueError naming what is accepted."""
    if isinstance(value, bool):
        raise ValueError(f'must be "all", "projection" or a plane number, got {value!r}')
    if isinstance(value, int) and value >= 0:
        return str(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in (Z_ALL, Z_PROJECTION):
            return v
        if v.isdecimal():
            return str(int(v))
    raise ValueError(f'must be "all", "projection" or a plane number, got {value!r}')
