"""``python -m fundl``: the ``fundl`` command, for when the console script is not on the PATH."""

import sys

from fundl.cli import main

sys.exit(main())
