"""``python -m durable``: the ``durable`` command line."""

import sys

from .cli import main

sys.exit(main())
