"""``python -m gag_jax``: the ``gag-jax`` command line (see :mod:`gag_jax.cli`)."""
import sys

from gag_jax.cli import main

if __name__ == "__main__":
    sys.exit(main())
