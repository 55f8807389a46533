"""``python -m recoverd``: the command line, for wherever the package is installed."""

import sys

from recoverd.cli import main

sys.exit(main())
