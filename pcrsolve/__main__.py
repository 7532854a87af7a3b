"""``python -m pcrsolve``: see :mod:`pcrsolve.cli`."""

import sys

from .cli import main

sys.exit(main())
