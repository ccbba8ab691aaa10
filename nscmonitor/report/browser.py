"""A headless Chromium for the report's PDF (and the test's screenshot): the browser lays the
page out exactly as a reader sees it, so the PDF is the HTML, printed.

Chromium is a system package (Debian/Ubuntu: ``apt-get install chromium``), never a Python
dependency; without it the PDF step says so and the HTML stands alone.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from nscmonitor.core.errors import UserFacingError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "msedge")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars")
NO_BROWSER = ("no Chromium/Chrome found on PATH for the PDF (Debian/Ubuntu: sudo apt-get install chromium); "
              "the HTML report is written and can be printed to PDF from any browser")


def find_browser() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def run_headless(html: Path, args: list[str], *, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    """One headless run on a local file with a fresh profile (nothing read from or left in the
    user's own browser profile); stderr carries the page's console messages."""
    browser = find_browser()
    if browser is None:
        raise UserFacingError(NO_BROWSER)
    with tempfile.TemporaryDirectory(prefix="nscmonitor-chromium-") as profile:
        cmd = [browser, *FLAGS, f"--user-data-dir={profile}", *args, html.resolve().as_uri()]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise UserFacingError(f"{Path(browser).name} did not finish within {timeout_s:.0f} s on {html}") from exc


def print_pdf(html: Path, pdf: Path) -> Path:
    pdf.parent.mkdir(parents=True, exist_ok=True)
    pdf.unlink(missing_ok=True)  # a PDF left by an earlier run must not pass for this one
    r = run_headless(html, [f"--print-to-pdf={pdf.resolve()}", "--no-pdf-header-footer"])
    if not pdf.is_file() or pdf.stat().st_size == 0:
        tail = (r.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise UserFacingError(f"the browser wrote no PDF for {html} (exit {r.returncode}): {tail[0]}")
    return pdf


def screenshot(html: Path, png: Path, *, width: int = 1200, height: int = 2400) -> subprocess.CompletedProcess:
    png.parent.mkdir(parents=True, exist_ok=True)
    return run_headless(html, [f"--screenshot={png.resolve()}", f"--window-size={width},{height}",
                               "--enable-logging=stderr", "--v=0"])
