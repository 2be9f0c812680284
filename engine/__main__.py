"""`python -m engine`: the `ngff-engine` command."""

import sys

from engine.cli.entry import main

if __name__ == "__main__":
    sys.exit(main())
