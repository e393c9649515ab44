"""`python -m vggnet` runs the command line."""

import sys

from vggnet.cli import main

if __name__ == "__main__":
    sys.exit(main())
