"""Log files for a daemon that runs for weeks unattended.

The facility engineer reads these after the fact ("what happened on Saturday night?"), so
every run appends to one rotating file in the user log directory: a fixed size cap keeps a
month of chatter from filling the instrument PC's system disk, and the rotated copies keep
enough history to see the start of a problem. The console keeps the short, human format.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

LOG_FILE = "nscmonitor.log"
MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 5
FILE_FORMAT = "%(asctime)s %(levelname)s %(process)d %(threadName)s %(name)s: %(message)s"
CONSOLE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_MARK = "_nscmonitor_handler"


def level_for(verbose: int) -> int:
    """-v is INFO, -vv DEBUG; the default WARNING keeps an interactive terminal quiet."""
    return max(logging.WARNING - 10 * verbose, logging.DEBUG)


def setup_logging(log_dir: Path | str | None, verbose: int = 0, *, console: bool = True,
                  filename: str = LOG_FILE, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> Path | None:
    """Configure the root logger once per process; returns the log file, or None when the
    directory cannot be written (a read-only profile must not stop the daemon: the reason
    goes to the console instead).

    The file always records INFO and above whatever ``verbose`` says, because the file is
    what is read after a failure, when it is too late to ask for -v. Calling it again
    replaces our handlers instead of stacking them (tests and ``main`` may both call it).

    Give each long-lived process its own ``filename`` (the dashboard: ``nscmonitor-gui.log``):
    on Windows a rotation cannot rename a file that another process holds open, so two
    processes sharing one file would stop rotating it.
    """
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(h)
        h.close()
    console_level = level_for(verbose)
    file_level = min(console_level, logging.INFO)
    root.setLevel(min(console_level, file_level))
    if console:
        ch = logging.StreamHandler(sys.stderr)
        ch.setLevel(console_level)
        ch.setFormatter(logging.Formatter(CONSOLE_FORMAT))
        setattr(ch, _MARK, True)
        root.addHandler(ch)
    if log_dir is None:
        return None
    path = Path(log_dir) / filename
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups,
                                                  encoding="utf-8", errors="backslashreplace", delay=False)
    except OSError as exc:
        logging.getLogger(__name__).warning("cannot write the log file %s: %s; logging to the console only",
                                            path, exc)
        return None
    fh.setLevel(file_level)
    fh.setFormatter(logging.Formatter(FILE_FORMAT))
    setattr(fh, _MARK, True)
    root.addHandler(fh)
    return path
