"""``python -m vif``: see :mod:`vif.cli`."""

import sys

from .cli import main

sys.exit(main())
