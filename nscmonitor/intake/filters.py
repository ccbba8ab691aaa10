"""Which files are not images for us: junk that operating systems, sync tools and
half-finished copies leave in instrument folders. Pure functions of the relative path."""

from __future__ import annotations

import re

IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".c01", ".dib", ".nd2", ".czi")

#: Directory names anywhere in the path whose contents are never plate images.
JUNK_DIRS = frozenset({
    "@eaDir", "__MACOSX", ".stversions", ".stfolder", ".Spotlight-V100", ".Trashes", ".fseventsd",
    "$RECYCLE.BIN", "System Volume Information", ".thumbnails", "thumbnails", "Thumbnails",
})

#: Basenames (regex) that are junk whatever the vendor. Each names the failure it prevents.
JUNK_NAMES = tuple(re.compile(p, re.IGNORECASE) for p in (
    r"^Thumbs\.db$",            # Windows thumbnail cache
    r"^desktop\.ini$",          # Windows folder settings
    r"^\.DS_Store$",            # macOS Finder
    r"^\._",                    # macOS AppleDouble resource forks (copies to SMB shares)
    r"^~\$",                    # Office lock files
    r"\.(?:tmp|part|partial|crdownload|filepart|swp)$",  # copies still in progress
    r"^\.~lock\.",              # LibreOffice lock files
    r"^\.",                     # other hidden files (sync tools' state)
))


def junk_reason(relpath: str) -> str | None:
    """Why this path is ignored, or None. ``relpath`` uses '/' separators."""
    parts = relpath.split("/")
    for d in parts[:-1]:
        if d in JUNK_DIRS:
            return f"inside a {d!r} folder"
    name = parts[-1]
    for rx in JUNK_NAMES:
        if rx.search(name):
            return "system or temporary file"
    return None


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)
