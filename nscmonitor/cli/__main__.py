import sys

from nscmonitor.cli import main

sys.exit(main())
