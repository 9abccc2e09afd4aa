"""``python -m fspo``: the same entry point as the ``fspo`` command."""

import sys

from fspo.cli import main

sys.exit(main())
