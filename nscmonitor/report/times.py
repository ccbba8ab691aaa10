"""Hours since induction as a person types them (``24,48,72``): the report's ``--times`` and
the dashboard's export field read them with the same rule and the same message."""

from __future__ import annotations

import math


def parse_hours(text: str) -> list[float]:
    """``"24, 48,72"`` -> ``[24.0, 48.0, 72.0]``; anything else is a ValueError whose message
    says what was expected."""
    try:
        hours = [float(h) for h in text.replace(" ", "").split(",") if h]
    except ValueError:
        raise ValueError(f"times: hours since induction separated by commas, e.g. 24,48,72; got {text!r}") from None
    if not hours or not all(math.isfinite(h) for h in hours):
        raise ValueError(f"times: finite hours since induction, e.g. 24,48,72; got {text!r}")
    return hours
