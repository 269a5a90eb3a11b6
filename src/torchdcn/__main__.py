"""``python -m torchdcn ...``: the same as the ``torchdcn`` command (see :mod:`torchdcn.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
