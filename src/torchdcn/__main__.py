"""``python -m torchdcn ...``: the same as the ``torchdcn`` command (:mod:`torchdcn.cli.main`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
