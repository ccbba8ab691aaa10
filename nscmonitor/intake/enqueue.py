"""Discovered images into the durable queue (the images table), a folder's batch at a time."""

from __future__ import annotations

import logging

from nscmonitor.core.names import shown
from nscmonitor.readers.decode import why
from nscmonitor.store.writer import Discovered, Writer

log = logging.getLogger(__name__)


def enqueue(writer: Writer, root: str, items: list[Discovered]) -> list[str]:
    """Queue the batch in one transaction; if the database refuses it, each file alone, so
    one row it refuses cannot keep the rest out. Returns the paths it refused (logged with
    the reason): intake forgets them, and the next rescan offers them again."""
    try:
        new, changed = writer.enqueue(items)
    except Exception:  # one row the database refuses must not keep the rest out of the queue
        log.exception("%s: queueing %d files failed; queueing them one by one", shown(root), len(items))
        new = changed = 0
        refused = []
        for item in items:
            try:
                n, c = writer.enqueue([item])
                new, changed = new + n, changed + c
            except Exception as exc:  # logged with the file; looked at again at the next rescan
                log.error("%s: cannot be queued: %s", shown(item.path), why(exc))
                refused.append(item.path)
        log.debug("%s: %d new, %d changed files queued", root, new, changed)
        return refused
    log.debug("%s: %d new, %d changed files queued", root, new, changed)
    return []
