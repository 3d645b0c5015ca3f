"""``python -m spead2.tools.bench``: the ``spead2_bench`` command."""

import sys

from .cli import main

sys.exit(main())
