"""``python -m da_train.report``: the same as the ``da-report`` command."""

import sys

from .command import main

sys.exit(main())
