"""Entry point of the frozen nscmonitor folder (PyInstaller needs a script, not a module)."""

import multiprocessing
import sys

from nscmonitor.cli import main

if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(main())
