"""The states of the durable queue (the ``images`` table's ``status`` column).

A ``str`` enum, so every layer (store, daemon, reports, dashboard) names a state by one
symbol while the stored values stay the plain words they always were: rows written before
the enum compare equal, and no migration is needed. The state machine is documented in
``nscmonitor/store/models.py``.
"""

from __future__ import annotations

from enum import Enum


class QueueState(str, Enum):
    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    QUARANTINED = "quarantined"
    SKIPPED = "skipped"
    RESCORE = "rescore"

    def __str__(self) -> str:
        """The stored word, in f-strings and str() alike on every supported Python."""
        return self.value


MAX_ATTEMPTS = 5
"""Claims of one image before it is quarantined with its last reason."""

WAITING = (QueueState.PENDING, QueueState.PROCESSING, QueueState.FAILED)
"""States of images that are still to be scored (pending work, in hand, or due a retry)."""

PROBLEMS = (QueueState.QUARANTINED, QueueState.FAILED)
"""States of images the user may want to look at (and requeue)."""
