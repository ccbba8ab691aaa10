"""File names whatever their bytes: stored losslessly, shown escaped.

POSIX file names are bytes. Python hands names that are not valid UTF-8 over as strings
with lone surrogates (``os.fsdecode``), which no database driver can encode: before this
module, one such name made every queue insert fail and nothing new was ever queued.

The stored form of a path is the path itself when it is valid Unicode (every existing row
stays as it was), and otherwise ``bytes:`` followed by its bytes with each byte that is not
part of valid UTF-8 written ``\\xNN`` and each backslash doubled. The daemon stores absolute
paths, which never start with ``bytes:``, so the mapping is one-to-one and ``from_db``
gives back exactly the bytes on disk. The stored form is also what status, the export and
the dashboard show: readable, and unmistakably escaped.
"""

from __future__ import annotations

import os
import re

MARK = "bytes:"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _escape(raw: bytes) -> str:
    out = []
    for ch in raw.decode("utf-8", "surrogateescape"):
        o = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        else:
            out.append(ch)
    return "".join(out)


def _unescape(body: str) -> bytes:
    out = bytearray()
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and body.startswith("\\\\", i):
            out += b"\\"
            i += 2
        elif ch == "\\" and body.startswith("\\x", i) and i + 4 <= len(body):
            out.append(int(body[i + 2:i + 4], 16))
            i += 4
        else:
            out += ch.encode("utf-8")
            i += 1
    return bytes(out)


def _valid(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def to_db(path: str) -> str:
    """The stored form of a file-system path (see the module docstring)."""
    return path if _valid(path) else MARK + _escape(os.fsencode(path))


def from_db(text: str) -> str:
    """The file-system path (``os.fsdecode`` form) of a stored path."""
    return os.fsdecode(_unescape(text[len(MARK):])) if text.startswith(MARK) else text


def clean(text: str) -> str:
    """Any string bound for a text column or a log line (a plate token, a channel, an error
    naming the file) with undecodable bytes written ``\\xNN``; valid text is unchanged."""
    if _valid(text):
        return text
    try:
        return _escape(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:  # surrogates outside the escape range (Windows names)
        return text.encode("utf-8", "backslashreplace").decode("ascii")


def shown(path: str) -> str:
    """A path for a log line or a message: undecodable bytes and control characters (a
    newline in a file name would forge a log line) written ``\\xNN``."""
    text = clean(path)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
