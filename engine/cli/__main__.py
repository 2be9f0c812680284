"""`python -m engine.cli`: the `ngff-engine` command without the worker fork server."""

import sys

from engine.cli.commands import main

sys.exit(main())
