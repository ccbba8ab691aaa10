"""What the notification hook was last told about one condition, so it hears each change once.

A daemon checks a condition (most images unlike the training data, a disk running low) at
every heartbeat; the hook must hear when it starts and when it ends, not at every check. What
was last told is read back from the event log, at the first check and again before each
telling, so neither a restarted daemon nor the other daemons sharing its database tell it again.
"""

from __future__ import annotations

from typing import Any


class ToldOnce:
    def __init__(self, repo: Any, kinds: tuple[str, ...], *, quiet: str) -> None:
        """``repo``: a ``store.reads.Repo``; ``kinds``: the condition's event kinds; ``quiet``:
        the kind that stands for "nothing to tell" when the log has none of them yet."""
        self.repo = repo
        self.kinds = kinds
        self.quiet = quiet
        self._told: str | None = None  # None: not yet read from the log

    def should_tell(self, kind: str) -> bool:
        if self._told is None:
            last = self.repo.last_event_of(self.kinds)
            self._told = last.kind if last is not None else self.quiet
        if kind == self._told:
            return False
        last = self.repo.last_event_of(self.kinds)
        if last is not None and last.kind == kind:  # another daemon on this database told it already
            self._told = kind
            return False
        return True

    def told(self, kind: str) -> None:
        self._told = kind
