"""Checks on single values read from the configuration, shared by every section's parser.

Each error names the key as the file spells it (``watch[2].quiet_seconds``), because the reader
is the person editing the file.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from nscmonitor.core.errors import ConfigError


def expect(d: dict, key: str, typ: type | tuple[type, ...], where: str, default: Any = None) -> Any:
    if key not in d:
        return default
    v = d[key]
    if typ is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, typ) or (isinstance(v, bool) and typ in (int, float)):
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise ConfigError(f"{where}{key}: expected {names}, got {v!r}")
    if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"{where}{key}: expected a finite number, got {v!r}")
    return v


def finite_everywhere(v: Any, where: str) -> None:
    """nan/inf slip through every comparison (nan < 0 and nan > 0 are both false), so a
    non-finite number anywhere in the file is refused, nested tables included."""
    if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"{where}: expected a finite number, got {v!r}")
    if isinstance(v, dict):
        for k, x in v.items():
            finite_everywhere(x, f"{where}.{k}" if where else str(k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            finite_everywhere(x, f"{where}[{i}]")


def induction_time(v: Any, where: str) -> datetime | None:
    if v is None:
        return None
    if isinstance(v, datetime):
        dt = v
    else:
        try:
            dt = datetime.fromisoformat(str(v))
        except ValueError as exc:
            raise ConfigError(f"{where}induction_time: not an ISO date-time: {v!r}") from exc
    return dt if dt.tzinfo else dt.astimezone(timezone.utc)
