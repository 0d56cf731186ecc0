"""``python -m shipyard`` is the ``shipyard`` command."""

import sys

from shipyard.cli import main

sys.exit(main())
