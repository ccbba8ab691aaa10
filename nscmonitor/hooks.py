"""Notifications: every event goes to the store (dashboard, status) and, when the config
names a hook command, to that command as JSON on stdin, so a lab can send an e-mail or a
chat message with its own tools. A failing hook is logged, never fatal."""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
from datetime import datetime, timezone

from sqlalchemy import Engine

from nscmonitor.store.events import record_event

log = logging.getLogger(__name__)


def emit(engine: Engine, kind: str, message: str, *, level: str = "info", data: dict | None = None,
         hook: str | None = None, path: str | None = None) -> None:
    now = datetime.now(timezone.utc)
    payload = json.loads(json.dumps({"kind": kind, "level": level, "message": message, "at": now.isoformat(),
                                     "path": path, "data": data or {}}, default=str))
    record_event(engine, kind, message, level=level, path=path, data=payload["data"] or None, at=now)
    if hook:
        run_hook(hook, payload)


def run_hook(hook: str, payload: dict, timeout: float = 30.0) -> bool:
    try:
        res = subprocess.run(shlex.split(hook), input=json.dumps(payload), text=True, capture_output=True,
                             timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("notification hook %r failed: %s", hook, exc)
        return False
    if res.returncode != 0:
        log.warning("notification hook %r exited %d: %s", hook, res.returncode, res.stderr.strip()[-500:])
        return False
    return True
